//! Routing and handlers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use nearcache_pg::{Principal, ProfileUpdate, RepoError, UserId, UserRepo};
use nearcache_store::{Fill, LoadError, Store};
use serde::{Deserialize, Serialize};

use crate::{ApiError, Authenticator, Metrics};

/// The store of principals, keyed by user id: a real cache, the pass-through stub, or a mock.
pub type PrincipalStore = Arc<dyn Store<UserId, Arc<CachedPrincipal>>>;

/// A principal as it is cached: what the handlers read of it (the user's id and whether the
/// user is active) and the JSON bodies of the routes that show it, rendered once per load
/// rather than once per request. The domain value itself is not kept: the bodies say all of it,
/// and it was a fifth of what a cached principal cost.
#[derive(Debug)]
pub struct CachedPrincipal {
    id: UserId,
    /// `GET /me`'s body, then `GET /me/organization`'s when it is not a part of the first.
    bodies: Bytes,
    /// Where `GET /me`'s body ends in `bodies`.
    me_end: u32,
    /// Where `GET /me/organization`'s body starts and ends in `bodies`.
    organization: (u32, u32),
    active: bool,
}

impl CachedPrincipal {
    /// Renders the bodies of `principal`.
    ///
    /// # Panics
    /// If the bodies take 4 GiB or more, which a row of the schema cannot.
    pub fn new(principal: Principal) -> Self {
        let mut bodies = serde_json::to_vec(&principal).expect("our types serialize");
        let me_end = bodies.len();
        let organization =
            serde_json::to_vec(&principal.organization).expect("our types serialize");
        // `GET /me`'s body ends with `"organization":{…}}`: point into it rather than hold
        // those bytes twice (a tenth of what a cached principal costs).
        let end = me_end.saturating_sub(1);
        let start = if bodies[..end].ends_with(&organization) {
            end - organization.len()
        } else {
            bodies.extend_from_slice(&organization);
            me_end
        };
        let offset = |n: usize| u32::try_from(n).expect("a principal's bodies fit in 4 GiB");
        // The buffer grew by doubling while it was written: give back what it does not use
        // (a principal's bodies are about 450 bytes in a 512-byte buffer otherwise).
        bodies.shrink_to_fit();
        let bodies = Bytes::from(bodies);
        // The first clone of a buffer gives it the shared header every later clone uses; make
        // it now, so that what a principal weighs is what it holds from its load on.
        drop(bodies.clone());
        Self {
            id: principal.user.id,
            bodies,
            me_end: offset(me_end),
            organization: (offset(start), offset(start + organization.len())),
            active: principal.user.active,
        }
    }

    /// `principal` as the cache stores it: rendered, and tagged with its organization's row
    /// (see [`CachedPrincipal::load`]).
    pub fn fill(principal: Principal) -> Fill<Arc<Self>> {
        let tag = principal.organization.id.tag();
        Fill::found(Arc::new(Self::new(principal))).with_tag(tag)
    }

    /// The principal of `id` as the cache stores it, tagged with its organization's row, or a
    /// negative entry tagged with the user's row: the one loader of the service, its audit and
    /// its warm start. A principal carries no tag for its own user's row, which is its key (a
    /// tag and its index row cost about 200 bytes a principal): its cache's handler must be
    /// keyed by `users` (`TableHandler::keyed_by`), as the server's is, so that a change of
    /// the row invalidates the key.
    ///
    /// # Errors
    /// The repository's error, as a [`LoadError`] (downcast it to [`RepoError`]).
    pub async fn load(repo: &dyn UserRepo, id: UserId) -> Result<Fill<Arc<Self>>, LoadError> {
        match repo.principal(id).await {
            Ok(Some(p)) => Ok(Self::fill(p)),
            // Remembered briefly, so a flood of tokens for a deleted user costs little.
            Ok(None) => Ok(Fill::absent().with_tag(id.tag())),
            Err(e) => Err(LoadError::new(e)),
        }
    }

    /// The user's id.
    pub fn id(&self) -> UserId {
        self.id
    }

    /// Whether the user is active (an inactive user's token gets 401).
    pub fn active(&self) -> bool {
        self.active
    }

    /// The body of `GET /me`: the principal, its organization included.
    pub fn me(&self) -> Bytes {
        self.bodies.slice(..self.me_end as usize)
    }

    /// The body of `GET /me/organization`.
    pub fn organization(&self) -> Bytes {
        let (start, end) = self.organization;
        self.bodies.slice(start as usize..end as usize)
    }

    /// The heap bytes it takes behind the `Arc` a cache holds: itself and its bodies (what
    /// `--cache-max-bytes` weighs a principal by, beside the cache's overhead).
    pub fn heap_bytes(&self) -> usize {
        // The Arc's counts, and the shared header of the bodies' buffer.
        let headers = 16 + 32;
        std::mem::size_of::<Self>() + headers + self.json_len()
    }

    /// Bytes of the rendered bodies it holds (the organization's body is a part of the
    /// principal's when it can be).
    pub fn json_len(&self) -> usize {
        self.bodies.len()
    }
}

/// What the cache is doing, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheState {
    /// Kept coherent by invalidations, and serving.
    Coherent,
    /// Kept coherent by invalidations, but not serving: the source of invalidations cannot be
    /// trusted right now.
    Bypass,
    /// Serving until the TTL, with no invalidations (one instance only).
    Ttl,
    /// No cache: every request loads.
    Off,
}

impl CacheState {
    /// Its name on `/healthz`: `coherent`, `bypass`, `ttl` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coherent => "coherent",
            Self::Bypass => "bypass",
            Self::Ttl => "ttl",
            Self::Off => "off",
        }
    }
}

/// Readiness as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Whether a load balancer should send requests: the database is reachable and, with a
    /// coherent cache, the cache is coherent (not bypassing while its source reconnects).
    /// `/livez` answers 200 whatever this says.
    pub ready: bool,
    /// The cache's state.
    pub cache: CacheState,
    /// Why the cache bypasses, when the reason is one an operator must fix (the database's
    /// triggers are missing or wrong); `None` otherwise.
    pub problem: Option<String>,
    /// While the cache bypasses: why the source's last attempt or connection ended (a refused
    /// connection, an untrusted certificate), as the source reported it.
    pub source_error: Option<String>,
    /// The invalidation source in use (`wal`, `notify`), once chosen.
    pub source: Option<&'static str>,
    /// The online audit so far, when it runs: entries checked, and of them stale (an
    /// invalidation missed; each evicted).
    pub audit: Option<(u64, u64)>,
}

/// What the composing binary tells the HTTP layer about the parts it cannot see.
pub trait Probe: Send + Sync {
    /// Readiness and cache state.
    fn health(&self) -> Health;
    /// Appends cache and listener metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
}

/// Everything a request needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: PrincipalStore,
    repo: Arc<dyn UserRepo>,
    auth: Authenticator,
    probe: Arc<dyn Probe>,
    metrics: Metrics,
    body_limit: usize,
}

impl AppState {
    /// The largest request body accepted, in bytes.
    pub const BODY_LIMIT: usize = 16 * 1024;

    /// State for the service.
    pub fn new(
        store: PrincipalStore,
        repo: Arc<dyn UserRepo>,
        auth: Authenticator,
        probe: Arc<dyn Probe>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                repo,
                auth,
                probe,
                metrics: Metrics::default(),
                body_limit: Self::BODY_LIMIT,
            }),
        }
    }

    /// The request metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The principal of `id` through the store; 401 if missing or inactive.
    async fn principal(&self, id: UserId) -> Result<Arc<CachedPrincipal>, ApiError> {
        let repo = self.inner.repo.clone();
        let loader = Box::pin(async move { CachedPrincipal::load(&*repo, id).await });
        match self.inner.store.get_or_store(id, loader).await {
            Ok(Some(p)) if p.active => Ok(p),
            Ok(_) => Err(ApiError::Unauthorized),
            Err(e) => Err(match e.downcast_ref::<RepoError>() {
                Some(repo) => ApiError::from_repo(repo),
                None => {
                    tracing::error!(error = %e, "loading a principal");
                    ApiError::Internal
                }
            }),
        }
    }

    async fn authenticate<B>(&self, req: &Request<B>) -> Result<Arc<CachedPrincipal>, ApiError> {
        let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        let id = self.inner.auth.verify(header).map_err(|reason| {
            tracing::debug!(%reason, "authentication failed");
            ApiError::Unauthorized
        })?;
        self.principal(id).await
    }
}

/// A route, as the metrics label it. The discriminant indexes the metrics' arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Healthz,
    Livez,
    Metrics,
    GetMe,
    PatchMe,
    GetOrganization,
    /// Unknown paths and methods.
    Other,
}

impl Route {
    /// Every route, in discriminant order.
    pub(crate) const ALL: [Route; 7] = [
        Route::Healthz,
        Route::Livez,
        Route::Metrics,
        Route::GetMe,
        Route::PatchMe,
        Route::GetOrganization,
        Route::Other,
    ];

    /// Its label in the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Livez => "GET /livez",
            Route::Metrics => "GET /metrics",
            Route::GetMe => "GET /me",
            Route::PatchMe => "PATCH /me",
            Route::GetOrganization => "GET /me/organization",
            Route::Other => "other",
        }
    }
}

/// Answers one request. Never fails: errors become JSON error responses.
pub async fn handle<B>(state: &AppState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    let (route, result) = route(state, req).await;
    let response = result.unwrap_or_else(ApiError::into_response);
    state
        .inner
        .metrics
        .record(route, response.status().as_u16(), start.elapsed());
    response
}

async fn route<B>(
    state: &AppState,
    req: Request<B>,
) -> (Route, Result<Response<Full<Bytes>>, ApiError>)
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = req.method().clone();
    match (req.uri().path(), method) {
        // HEAD answers as GET does, without the body (hyper leaves it out).
        ("/healthz", Method::GET | Method::HEAD) => (Route::Healthz, Ok(healthz(state))),
        ("/livez", Method::GET | Method::HEAD) => (
            Route::Livez,
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"status": "alive"}),
            )),
        ),
        ("/metrics", Method::GET | Method::HEAD) => (Route::Metrics, Ok(metrics(state))),
        ("/me", Method::GET) => (Route::GetMe, get_me(state, req).await),
        ("/me", Method::PATCH) => (Route::PatchMe, patch_me(state, req).await),
        ("/me/organization", Method::GET) => {
            (Route::GetOrganization, get_organization(state, req).await)
        }
        ("/healthz" | "/livez" | "/metrics" | "/me" | "/me/organization", _) => {
            (Route::Other, Err(ApiError::MethodNotAllowed))
        }
        _ => (Route::Other, Err(ApiError::NotFound)),
    }
}

fn healthz(state: &AppState) -> Response<Full<Bytes>> {
    let health = state.inner.probe.health();
    let (status, word) = if health.ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let mut body = serde_json::json!({"status": word, "cache": health.cache.as_str()});
    if let Some(problem) = health.problem {
        body["problem"] = problem.into();
    }
    if let Some(error) = health.source_error {
        body["source_error"] = error.into();
    }
    if let Some(source) = health.source {
        body["source"] = source.into();
    }
    if let Some((checked, stale)) = health.audit {
        let ratio = if checked == 0 {
            0.0
        } else {
            stale as f64 / checked as f64
        };
        body["audit"] =
            serde_json::json!({"checked": checked, "stale": stale, "stale_ratio": ratio});
    }
    json(status, &body)
}

fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    let mut out = String::with_capacity(4096);
    state.inner.metrics.render(&mut out);
    let _ = write!(
        out,
        "# HELP nearcache_auth_tokens_remembered Verified tokens remembered (at most {}).\n# TYPE nearcache_auth_tokens_remembered gauge\nnearcache_auth_tokens_remembered {}\n",
        Authenticator::REMEMBERED_MAX,
        state.inner.auth.remembered()
    );
    state.inner.probe.render_metrics(&mut out);
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn get_me<B>(state: &AppState, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError> {
    let principal = state.authenticate(&req).await?;
    Ok(json_bytes(StatusCode::OK, principal.me()))
}

async fn get_organization<B>(
    state: &AppState,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let principal = state.authenticate(&req).await?;
    Ok(json_bytes(StatusCode::OK, principal.organization()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchMe {
    name: Option<String>,
    email: Option<String>,
}

async fn patch_me<B>(state: &AppState, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let principal = state.authenticate(&req).await?;
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limit = state.inner.body_limit;
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?
        .to_bytes();
    let patch: PatchMe = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let change = ProfileUpdate::new(patch.name.as_deref(), patch.email.as_deref())?;
    let id = principal.id;
    let written = state.inner.repo.update_profile(id, &change).await;
    // Read-your-writes: forget the old principal before answering, whatever the outcome (a
    // write that reported an error may still have committed). The notification that follows
    // does the same, harmlessly.
    state.inner.store.invalidate(&id);
    written.map_err(|e| ApiError::from_repo(&e))?;
    let principal = state.principal(id).await?;
    Ok(json_bytes(StatusCode::OK, principal.me()))
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    json_bytes(
        status,
        Bytes::from(serde_json::to_vec(value).expect("our types serialize")),
    )
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod cached_tests {
    use super::*;
    use nearcache_pg::{OrgId, Organization, User, UserId};

    #[test]
    fn the_organization_body_is_the_one_rendered_alone_and_shares_the_principals_bytes() {
        let now = time::OffsetDateTime::now_utc();
        let organization = Organization {
            id: OrgId::new(uuid::Uuid::new_v4()),
            name: "Acme \"quoted\" — ünïcode".into(),
            plan: "pro".into(),
            created_at: now,
            updated_at: now,
        };
        let user = User {
            id: UserId::new(uuid::Uuid::new_v4()),
            org_id: organization.id,
            email: "a@acme.io".into(),
            name: "A".into(),
            active: true,
            created_at: now,
            updated_at: now,
        };
        let alone = serde_json::to_vec(&organization).unwrap();
        let cached = CachedPrincipal::new(Principal { user, organization });
        assert_eq!(&cached.organization()[..], &alone[..]);
        assert_eq!(
            cached.json_len(),
            cached.me().len(),
            "one copy of the bytes"
        );
        let me: serde_json::Value = serde_json::from_slice(&cached.me()).unwrap();
        assert_eq!(me["organization"]["name"], "Acme \"quoted\" — ünïcode");
    }
}
