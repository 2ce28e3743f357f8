//! Serving connections over TCP, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{handle, ApiError, AppState};

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long a client may take to send its request headers. Default 10 s.
    pub header_timeout: Duration,
    /// How long requests in flight may take to finish after shutdown begins; those still
    /// running then are answered 503. Default 10 s.
    pub drain_timeout: Duration,
    /// Log a line per request (target `access`, info level). Default off.
    pub access_log: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            access_log: false,
        }
    }
}

/// How long the answers given at the drain timeout get to reach their clients.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and lets
/// requests in flight finish for at most `config.drain_timeout`; any still running then is
/// answered `503 {"error":"unavailable"}` rather than dropped. Per-connection errors are
/// logged, never fatal. Returns whether every request finished within the drain.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let graceful = GracefulShutdown::new();
    let give_up = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let give_up = give_up.clone();
        let access_log = config.access_log;
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            let give_up = give_up.clone();
            let line = access_log.then(|| {
                (
                    Instant::now(),
                    req.method().clone(),
                    req.uri().path().to_owned(),
                )
            });
            async move {
                // Biased, the request first: one answered at its first poll (a cache hit)
                // never registers with the shutdown token.
                let response = tokio::select! {
                    biased;
                    response = handle(&state, req) => response,
                    () = give_up.cancelled() => {
                        let mut r = ApiError::ShuttingDown.into_response();
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        r
                    }
                };
                if let Some((start, method, path)) = line {
                    tracing::info!(
                        target: "access",
                        %peer,
                        %method,
                        path,
                        status = response.status().as_u16(),
                        micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("http: draining connections");
    let mut drained = pin!(graceful.shutdown());
    if tokio::time::timeout(config.drain_timeout, &mut drained)
        .await
        .is_ok()
    {
        tracing::info!("http: every request answered, all connections closed");
        return true;
    }
    tracing::warn!(timeout = ?config.drain_timeout, "http: requests still running at the shutdown timeout: answering them 503");
    give_up.cancel();
    if tokio::time::timeout(LAST_WORDS, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!("http: connections still open after the 503s; closing them");
    }
    false
}
