//! `/healthz`, `/livez` and `/metrics` for any set of caches and sources, as one tower
//! [`Service`]: what the reference service answers, for a service of your own.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use nearcache::{Exposition, Monitor};
use tower_service::Service;

type Extra = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// Answers `GET /healthz` (200 when every cache serves, 503 otherwise, with the reason), `GET
/// /livez` (200 while the process answers) and `GET /metrics` (the caches' and sources'
/// counters and gauges in Prometheus' text format), `HEAD` as `GET`; anything else is 404, or
/// 405 for another method on those paths. Cheap to clone.
///
/// With axum, route each path to it:
///
/// ```
/// use nearcache::{Cache, CacheConfig, Monitor};
/// use nearcache_tower::HealthRoutes;
/// # use std::convert::Infallible;
/// # use tower_service::Service;
///
/// let cache: Cache<i64, String> = Cache::new(CacheConfig::default());
/// let health = HealthRoutes::new(Monitor::new().cache("accounts", &cache));
/// // Router::new()
/// //     .route_service("/healthz", health.clone())
/// //     .route_service("/livez", health.clone())
/// //     .route_service("/metrics", health)
/// # let mut health = health;
/// # let request = http::Request::get("/healthz").body(()).unwrap();
/// # let response = futures_util::FutureExt::now_or_never(health.call(request)).unwrap().unwrap();
/// # assert_eq!(response.status(), 200);
/// # assert_eq!(response.body(), r#"{"caches":{"accounts":"coherent"},"status":"ok"}"#);
/// ```
#[derive(Clone)]
pub struct HealthRoutes {
    monitor: Monitor,
    extra: Option<Extra>,
}

impl std::fmt::Debug for HealthRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRoutes")
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}

impl HealthRoutes {
    /// Routes reporting what `monitor` watches.
    pub fn new(monitor: Monitor) -> Self {
        Self {
            monitor,
            extra: None,
        }
    }

    /// Adds the service's own metrics to `/metrics`: `add` is called on each scrape.
    #[must_use]
    pub fn with_metrics(mut self, add: impl Fn(&mut Exposition) + Send + Sync + 'static) -> Self {
        self.extra = Some(Arc::new(add));
        self
    }

    /// The `/healthz` body and status now.
    pub fn healthz(&self) -> (StatusCode, String) {
        let health = self.monitor.health();
        let caches: serde_json::Map<String, serde_json::Value> = health
            .caches
            .iter()
            .map(|(name, mode)| (name.clone(), mode.as_str().into()))
            .collect();
        let mut body = serde_json::json!({
            "status": if health.ready { "ok" } else { "unavailable" },
            "caches": caches,
        });
        if let Some(problem) = health.problem {
            body["problem"] = problem.into();
        }
        if let Some(error) = health.source_error {
            body["source_error"] = error.into();
        }
        let status = if health.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body.to_string())
    }

    /// The `/metrics` text now.
    pub fn metrics(&self) -> String {
        let mut out = Exposition::new();
        self.monitor.render(&mut out);
        if let Some(extra) = &self.extra {
            extra(&mut out);
        }
        out.finish()
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<String> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let (status, content_type, body) = match (req.uri().path(), get) {
            ("/healthz", true) => {
                let (status, body) = self.healthz();
                (status, "application/json", body)
            }
            ("/livez", true) => (
                StatusCode::OK,
                "application/json",
                r#"{"status":"alive"}"#.to_string(),
            ),
            ("/metrics", true) => (StatusCode::OK, Exposition::CONTENT_TYPE, self.metrics()),
            ("/healthz" | "/livez" | "/metrics", false) => error(StatusCode::METHOD_NOT_ALLOWED),
            _ => error(StatusCode::NOT_FOUND),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

fn error(status: StatusCode) -> (StatusCode, &'static str, String) {
    let code = if status == StatusCode::NOT_FOUND {
        "not_found"
    } else {
        "method_not_allowed"
    };
    (
        status,
        "application/json",
        format!(r#"{{"error":"{code}"}}"#),
    )
}

impl<B> Service<Request<B>> for HealthRoutes {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}

#[cfg(test)]
mod tests {
    use nearcache::{Cache, CacheConfig, Mode};
    use nearcache_source::SourceStatus;

    use super::*;

    fn call(routes: &HealthRoutes, method: Method, path: &str) -> Response<String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        routes.answer(&request)
    }

    #[test]
    fn healthz_is_503_with_the_reason_while_a_cache_bypasses() {
        let cache: Cache<u32, u32> = Cache::new(CacheConfig::default());
        let status = SourceStatus::default();
        let routes = HealthRoutes::new(Monitor::new().cache("a", &cache).source("wal", &status))
            .with_metrics(|out| out.gauge("app_up", "1 when up.", &[], 1.0));
        assert_eq!(call(&routes, Method::GET, "/healthz").status(), 200);

        cache.set_mode(Mode::Bypass);
        status.set_problem(Some("wal_level is replica".into()));
        status.ended("connection refused".into(), false);
        let response = call(&routes, Method::GET, "/healthz");
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["caches"]["a"], "bypass");
        assert_eq!(body["problem"], "wal_level is replica");
        assert_eq!(body["source_error"], "connection refused");
        // Alive all the same.
        assert_eq!(call(&routes, Method::HEAD, "/livez").status(), 200);

        let metrics = call(&routes, Method::GET, "/metrics");
        assert_eq!(metrics.headers()[CONTENT_TYPE], Exposition::CONTENT_TYPE);
        let text = metrics.body();
        assert!(
            text.contains("nearcache_cache_coherent{cache=\"a\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("nearcache_source_failures_total{source=\"wal\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("app_up 1\n"), "{text}");
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let routes = HealthRoutes::new(Monitor::new());
        assert_eq!(call(&routes, Method::POST, "/metrics").status(), 405);
        assert_eq!(call(&routes, Method::GET, "/account").status(), 404);
        assert_eq!(
            call(&routes, Method::GET, "/healthz").status(),
            200,
            "nothing to wait for"
        );
    }
}
