//! Serving connections over TCP, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::{handle, AppState};

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long a client may take to send its request headers. Default 10 s.
    pub header_timeout: Duration,
    /// How long open connections may take to finish after shutdown begins. Default 10 s.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops accepting and lets open
/// connections finish for at most `config.drain_timeout`. Per-connection errors are logged,
/// never fatal. Returns whether every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let graceful = GracefulShutdown::new();
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
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, req).await) }
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
    match tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("http: all connections closed");
            true
        }
        Err(_) => {
            tracing::warn!(timeout = ?config.drain_timeout, "http: connections still open at the drain timeout");
            false
        }
    }
}
