//! Handler tests: a mockall repository and the pass-through store, no database, no socket.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use jsonwebtoken::{encode, EncodingKey, Header};
use nearcache_pg::{
    MockUserRepo, OrgId, Organization, Principal, RepoError, User, UserId, UserRepo,
};
use nearcache_store::{MockStore, Mode, PassThrough};
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::CacheState;
use crate::{handle, AppState, AuthConfig, Authenticator, CachedPrincipal, Health, Key, Probe};

const SECRET: &[u8] = b"test-secret";

struct Ready(bool);
impl Probe for Ready {
    fn health(&self) -> Health {
        Health {
            ready: self.0,
            cache: CacheState::Off,
            problem: None,
            source_error: None,
            source: None,
            audit: None,
        }
    }
    fn render_metrics(&self, out: &mut String) {
        out.push_str("probe_metric 1\n");
    }
}

fn principal(id: UserId, active: bool) -> Principal {
    let now = OffsetDateTime::now_utc();
    let org = OrgId::new(Uuid::new_v4());
    Principal {
        user: User {
            id,
            org_id: org,
            email: "ada@acme.io".into(),
            name: "Ada".into(),
            active,
            created_at: now,
            updated_at: now,
        },
        organization: Organization {
            id: org,
            name: "Acme".into(),
            plan: "pro".into(),
            created_at: now,
            updated_at: now,
        },
    }
}

fn token(id: UserId) -> String {
    let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
    encode(
        &Header::default(),
        &json!({"sub": id.to_string(), "exp": exp}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn state(repo: impl UserRepo + 'static) -> AppState {
    let auth = Authenticator::new(&AuthConfig::new(Key::Secret(SECRET.to_vec()))).unwrap();
    AppState::new(
        Arc::new(PassThrough::new()),
        Arc::new(repo),
        auth,
        Arc::new(Ready(true)),
    )
}

fn request(method: &str, path: &str, auth: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = auth {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn call(state: &AppState, req: Request<Full<Bytes>>) -> (StatusCode, Value) {
    let res = handle(state, req).await;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, value)
}

fn repo_with(p: Option<Principal>) -> MockUserRepo {
    let mut repo = MockUserRepo::new();
    repo.expect_principal().returning(move |_| Ok(p.clone()));
    repo
}

#[tokio::test]
async fn me_returns_the_user_with_its_organization() {
    let id = UserId::new(Uuid::new_v4());
    let s = state(repo_with(Some(principal(id, true))));
    let (status, body) = call(&s, request("GET", "/me", Some(&token(id)), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["id"], id.to_string());
    assert_eq!(body["organization"]["name"], "Acme");
    let (status, body) = call(&s, request("GET", "/me/organization", Some(&token(id)), "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Acme");
}

#[tokio::test]
async fn inactive_missing_and_unauthenticated_users_get_the_same_401() {
    let id = UserId::new(Uuid::new_v4());
    let cases = [
        (
            state(repo_with(Some(principal(id, false)))),
            Some(token(id)),
        ),
        (state(repo_with(None)), Some(token(id))),
        (state(MockUserRepo::new()), None),
        (state(MockUserRepo::new()), Some("not.a.jwt".into())),
    ];
    for (s, t) in cases {
        let (status, body) = call(&s, request("GET", "/me", t.as_deref(), "")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({"error": "unauthorized", "message": "authentication required"})
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    let mut repo = MockUserRepo::new();
    repo.expect_principal()
        .returning(|_| Err(RepoError::Unavailable(sqlx::Error::PoolTimedOut)));
    let id = UserId::new(Uuid::new_v4());
    let (status, body) = call(&state(repo), request("GET", "/me", Some(&token(id)), "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn patch_validates_its_input() {
    let id = UserId::new(Uuid::new_v4());
    let s = state(repo_with(Some(principal(id, true))));
    let t = token(id);
    for (body, want) in [
        ("{", StatusCode::BAD_REQUEST),
        ("[]", StatusCode::BAD_REQUEST),
        (r#"{"name":"Ada","admin":true}"#, StatusCode::BAD_REQUEST),
        (r#"{}"#, StatusCode::BAD_REQUEST),
        (r#"{"email":"nope"}"#, StatusCode::BAD_REQUEST),
        (r#"{"name":"   "}"#, StatusCode::BAD_REQUEST),
    ] {
        let (status, json) = call(&s, request("PATCH", "/me", Some(&t), body)).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(json["error"], "bad_request", "{body}");
    }
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(AppState::BODY_LIMIT));
    let (status, _) = call(&s, request("PATCH", "/me", Some(&t), &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut req = request("PATCH", "/me", Some(&t), "name=x");
    req.headers_mut().insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    assert_eq!(call(&s, req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_taken_email_is_a_409() {
    let id = UserId::new(Uuid::new_v4());
    let mut repo = repo_with(Some(principal(id, true)));
    repo.expect_update_profile()
        .returning(|_, _| Err(RepoError::Conflict("users_email_key is taken".into())));
    let (status, body) = call(
        &state(repo),
        request("PATCH", "/me", Some(&token(id)), r#"{"email":"b@acme.io"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["message"], "email is already taken");
}

#[tokio::test]
async fn patch_invalidates_the_user_before_answering() {
    let id = UserId::new(Uuid::new_v4());
    let p = Arc::new(CachedPrincipal::new(principal(id, true)));
    let mut repo = MockUserRepo::new();
    let updated = principal(id, true).user;
    repo.expect_update_profile()
        .times(1)
        .returning(move |_, _| Ok(updated.clone()));
    let mut store = MockStore::new();
    let mut seq = mockall::Sequence::new();
    let p1 = p.clone();
    store
        .expect_get_or_store()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, _| Ok(Some(p1.clone())));
    store
        .expect_invalidate()
        .withf(move |key| *key == id)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    let p2 = p.clone();
    store
        .expect_get_or_store()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, _| Ok(Some(p2.clone())));
    store.expect_mode().return_const(Mode::Coherent);
    let auth = Authenticator::new(&AuthConfig::new(Key::Secret(SECRET.to_vec()))).unwrap();
    let s = AppState::new(Arc::new(store), Arc::new(repo), auth, Arc::new(Ready(true)));
    let (status, _) = call(
        &s,
        request("PATCH", "/me", Some(&token(id)), r#"{"name":"Ada L."}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let s = state(MockUserRepo::new());
    let (status, body) = call(&s, request("GET", "/healthz", None, "")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "ok", "cache": "off"}))
    );
    assert_eq!(
        call(&s, request("GET", "/nope", None, "")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&s, request("DELETE", "/me", None, "")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let res = handle(&s, request("GET", "/metrics", None, "")).await;
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("nearcache_http_requests_total{route=\"GET /healthz\",status=\"200\"} 1"));
    assert!(text.contains("probe_metric 1"));

    let auth = Authenticator::new(&AuthConfig::new(Key::Secret(SECRET.to_vec()))).unwrap();
    let down = AppState::new(
        Arc::new(PassThrough::new()),
        Arc::new(MockUserRepo::new()),
        auth,
        Arc::new(Ready(false)),
    );
    let (status, body) = call(&down, request("GET", "/healthz", None, "")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("unavailable"))
    );
}
