//! The Layer, its Service, and how a subject becomes a principal.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use nearcache_store::{Fill, LoadError, Store};
use tower_layer::Layer;
use tower_service::Service;

use crate::Authenticator;

/// How the subject of a verified token becomes the principal handlers see.
pub trait Resolve<S>: Send + Sync + 'static {
    /// What goes into the request's extensions.
    type Principal: Clone + Send + Sync + 'static;

    /// The principal of `subject`; `Ok(None)` when there is none (the request gets 401).
    ///
    /// # Errors
    /// When it cannot be loaded (the request gets 503).
    fn resolve(&self, subject: S)
        -> BoxFuture<'static, Result<Option<Self::Principal>, LoadError>>;
}

/// Resolves through a [`Store`]: the cached principal, or the loader's on a miss (stored with
/// the tags it carries, so that a change of those rows evicts it).
pub struct Through<K, V, F> {
    store: Arc<dyn Store<K, V>>,
    load: F,
}

impl<K, V, F, Fut> Resolve<K> for Through<K, V, F>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Fill<V>, LoadError>> + Send + 'static,
{
    type Principal = V;

    fn resolve(&self, key: K) -> BoxFuture<'static, Result<Option<V>, LoadError>> {
        let store = self.store.clone();
        let loader = Box::pin((self.load)(key.clone()));
        Box::pin(async move { store.get_or_store(key, loader).await })
    }
}

/// Authenticates every request: see the [crate docs](crate).
pub struct AuthLayer<S, R> {
    auth: Arc<Authenticator<S>>,
    resolve: Arc<R>,
}

impl<S, R> Clone for AuthLayer<S, R> {
    fn clone(&self) -> Self {
        Self {
            auth: self.auth.clone(),
            resolve: self.resolve.clone(),
        }
    }
}

impl<S, R: Resolve<S>> AuthLayer<S, R> {
    /// A layer verifying tokens with `auth` and resolving subjects with `resolve`.
    pub fn new(auth: Authenticator<S>, resolve: R) -> Self {
        Self {
            auth: Arc::new(auth),
            resolve: Arc::new(resolve),
        }
    }
}

impl<K, V, F, Fut> AuthLayer<K, Through<K, V, F>>
where
    Through<K, V, F>: Resolve<K>,
    F: Fn(K) -> Fut,
{
    /// A layer resolving subjects through `store`, with `load` on a miss.
    pub fn through_store(auth: Authenticator<K>, store: Arc<dyn Store<K, V>>, load: F) -> Self {
        Self::new(auth, Through { store, load })
    }
}

impl<Inner, S, R> Layer<Inner> for AuthLayer<S, R> {
    type Service = AuthService<Inner, S, R>;

    fn layer(&self, inner: Inner) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            resolve: self.resolve.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around yours.
pub struct AuthService<Inner, S, R> {
    inner: Inner,
    auth: Arc<Authenticator<S>>,
    resolve: Arc<R>,
}

impl<Inner: Clone, S, R> Clone for AuthService<Inner, S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            auth: self.auth.clone(),
            resolve: self.resolve.clone(),
        }
    }
}

impl<Inner, S, R, B, ResBody> Service<Request<B>> for AuthService<Inner, S, R>
where
    Inner: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
    S: FromStr + Clone + Send + Sync + 'static,
    R: Resolve<S>,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, Inner::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        let subject = match self.auth.verify(header) {
            Ok(subject) => subject,
            Err(reason) => {
                tracing::debug!(%reason, "authentication failed");
                return Box::pin(std::future::ready(Ok(unauthorized())));
            }
        };
        let resolving = self.resolve.resolve(subject);
        Box::pin(async move {
            match resolving.await {
                Ok(Some(principal)) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Ok(None) => Ok(unauthorized()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the principal");
                    Ok(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the principal cannot be loaded; try again",
                    ))
                }
            }
        })
    }
}

fn unauthorized<B: From<Bytes>>() -> Response<B> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn error<B: From<Bytes>>(status: StatusCode, code: &str, message: &str) -> Response<B> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use nearcache_store::{PassThrough, Tag};
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::{AuthConfig, Key};

    #[derive(Clone, Debug, PartialEq)]
    struct Account(i64);

    #[derive(Debug, thiserror::Error)]
    #[error("database down")]
    struct Down;

    fn layer(loads: Arc<AtomicUsize>) -> AuthLayer<i64, impl Resolve<i64, Principal = Account>> {
        let auth = Authenticator::new(&AuthConfig::new(Key::Secret(b"s".to_vec()))).unwrap();
        let store: Arc<dyn Store<i64, Account>> = Arc::new(PassThrough::new());
        AuthLayer::through_store(auth, store, move |id: i64| {
            loads.fetch_add(1, Ordering::Relaxed);
            async move {
                match id {
                    404 => Ok(Fill::absent()),
                    503 => Err(LoadError::new(Down)),
                    _ => Ok(Fill::found(Account(id)).with_tag(Tag::row("accounts", id))),
                }
            }
        })
    }

    fn bearer(sub: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = serde_json::json!({"sub": sub, "exp": exp});
        let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        format!("Bearer {token}")
    }

    async fn call(authorization: Option<&str>, loads: &Arc<AtomicUsize>) -> (u16, String) {
        let svc = layer(loads.clone()).layer(service_fn(|req: Request<()>| async move {
            let who = req.extensions().get::<Account>().cloned();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{who:?}")))))
        }));
        let mut req = Request::new(());
        if let Some(a) = authorization {
            req.headers_mut().insert(AUTHORIZATION, a.parse().unwrap());
        }
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_principal_reaches_the_handler_and_failures_never_do() {
        let loads = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            call(Some(&bearer("42")), &loads).await,
            (200, "Some(Account(42))".into())
        );
        assert_eq!(loads.load(Ordering::Relaxed), 1);

        let (status, body) = call(None, &loads).await;
        assert_eq!(status, 401);
        assert!(body.contains(r#""error":"unauthorized""#), "{body}");
        assert_eq!(call(Some("Bearer not.a.jwt"), &loads).await.0, 401);
        // A sub that is not the key type is a 401, and loads nothing.
        assert_eq!(call(Some(&bearer("forty-two")), &loads).await.0, 401);
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        // No such principal: 401; cannot load: 503, both JSON, neither reaches the handler.
        assert_eq!(call(Some(&bearer("404")), &loads).await.0, 401);
        let (status, body) = call(Some(&bearer("503")), &loads).await;
        assert_eq!(status, 503);
        assert!(body.contains(r#""error":"unavailable""#), "{body}");
    }
}
