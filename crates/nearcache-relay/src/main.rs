//! `nearcache-relay`: flags and environment, `/healthz` and `/metrics`, signals; the relay
//! itself is the library's `run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nearcache_listener::ListenerConfig;
use nearcache_relay::{RelayConfig, RelaySource, RelayStatus, Role};
use nearcache_source::Exposition;
use nearcache_wal::WalConfig;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// Logical decoding of the publication `nearcache` (no trigger, no lock at commit).
    Wal,
    /// LISTEN/NOTIFY, fed by the triggers.
    Notify,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 5m)"))
}

/// Reads Postgres once and publishes every invalidation to NATS JetStream for a fleet of
/// nearcache instances (`nearcache-server --source nats`). Run two for availability: one
/// publishes, the other takes over when it dies.
#[derive(Debug, Parser)]
#[command(
    name = "nearcache-relay",
    version,
    after_help = "Environment: RUST_LOG sets the log filter (default: info). Exit status: 0 \
                  stopped; 1 a fatal error; 2 a bad configuration."
)]
struct Flags {
    /// Postgres URL (the primary).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Where to read changes.
    #[arg(long, env = "NEARCACHE_SOURCE", value_enum, default_value = "wal")]
    source: Source,
    /// The NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[command(flatten)]
    nats_security: nearcache_nats::NatsSecurity,
    /// The JetStream stream (created if missing).
    #[arg(long, env = "NEARCACHE_NATS_STREAM", default_value = "NEARCACHE")]
    nats_stream: String,
    /// The subject prefix (default `nearcache.<database name>`).
    #[arg(long, env = "NEARCACHE_NATS_PREFIX")]
    nats_prefix: Option<String>,
    /// How often to publish a heartbeat.
    #[arg(long, env = "NEARCACHE_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = duration)]
    heartbeat_interval: Duration,
    /// The lease's time to live: how long a standby waits after the active relay dies.
    /// `0s`: no lease (run one relay only).
    #[arg(long, env = "NEARCACHE_LEASE_TTL", default_value = "3s", value_parser = duration)]
    lease_ttl: Duration,
    /// Most keys waiting to be published. Past it (NATS slower than the database's writes) the
    /// relay says it is in doubt, so that instances bypass, and starts a new epoch, rather than
    /// hold a growing backlog.
    #[arg(
        long,
        env = "NEARCACHE_RELAY_MAX_QUEUED_KEYS",
        default_value_t = 200_000
    )]
    max_queued_keys: usize,
    /// Address of `/healthz` and `/metrics`.
    #[arg(long, env = "NEARCACHE_RELAY_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
}

fn config(flags: &Flags) -> Result<RelayConfig, String> {
    let database = database_name(&flags.database_url)?;
    let source = match flags.source {
        Source::Wal => RelaySource::Wal(
            WalConfig::new(&flags.database_url).map_err(|e| format!("--database-url: {e}"))?,
        ),
        Source::Notify => RelaySource::Notify(
            ListenerConfig::new(&flags.database_url).map_err(|e| format!("--database-url: {e}"))?,
        ),
    };
    let mut config = RelayConfig::new(source, flags.nats_url.clone(), &database);
    flags.nats_security.validate().map_err(|e| e.to_string())?;
    config.nats_security.clone_from(&flags.nats_security);
    config.stream.clone_from(&flags.nats_stream);
    if let Some(prefix) = &flags.nats_prefix {
        config.prefix.clone_from(prefix);
    }
    if flags.heartbeat_interval.is_zero() {
        return Err("--heartbeat-interval must be positive".into());
    }
    config.heartbeat_interval = flags.heartbeat_interval;
    config.lease_ttl = (!flags.lease_ttl.is_zero()).then_some(flags.lease_ttl);
    if flags.max_queued_keys == 0 {
        return Err("--max-queued-keys must be positive".into());
    }
    config.max_queued_keys = flags.max_queued_keys;
    Ok(config)
}

/// The database name of a URL, for the default subject prefix.
fn database_name(url: &str) -> Result<String, String> {
    let wal = WalConfig::new(url).map_err(|e| format!("--database-url: {e}"))?;
    Ok(wal.database().to_string())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match config(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nearcache-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::from_str(&spec) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("nearcache-relay: RUST_LOG: invalid filter {spec:?}: {e}");
                return ExitCode::from(2);
            }
        },
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nearcache-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(flags.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", flags.listen))?;
        let status = RelayStatus::default();
        tracing::info!(prefix = %config.prefix, stream = %config.stream, addr = %flags.listen, "relay: starting");
        let http = tokio::spawn(serve(listener, status.clone()));
        let ended = nearcache_relay::run(config, status, shutdown_signal()).await;
        http.abort();
        ended.map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nearcache-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `/healthz` (200 while active and its source coherent, or standing by; 503 otherwise, with
/// the role) and `/metrics`.
async fn serve(listener: tokio::net::TcpListener, status: RelayStatus) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(answer(req.uri().path(), &status)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, status: &RelayStatus) -> Response<Full<Bytes>> {
    let role = status.role();
    let source = status.source().snapshot();
    let coherent = source.state == nearcache_source::SourceState::Listening;
    let (code, body) = match path {
        "/healthz" => {
            let ok = role == Role::Standby || (role == Role::Active && coherent);
            let word = match role {
                Role::Connecting => "connecting",
                Role::Standby => "standby",
                Role::Active => "active",
                Role::Stopped => "stopped",
            };
            let body = serde_json::json!({
                "role": word,
                "source_coherent": coherent,
                "epoch": status.epoch(),
                "nats_error": status.nats_error(),
            })
            .to_string();
            (
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        "/metrics" => {
            let mut out = Exposition::new();
            let active = f64::from(u8::from(role == Role::Active));
            out.gauge(
                "nearcache_relay_active",
                "1 while this relay publishes.",
                &[],
                active,
            );
            let counters = [
                ("nearcache_relay_published_total", "Messages published, heartbeats included.", status.published()),
                ("nearcache_relay_publish_errors_total", "Publications NATS did not acknowledge.", status.publish_errors()),
                ("nearcache_relay_queue_overflows_total", "Times the queue was full (NATS slower than the writes): the relay said it was in doubt and started a new epoch.", status.overflows()),
                ("nearcache_relay_nats_failures_total", "NATS connections that failed or ended (refused credentials or certificate included), each retried with backoff.", status.nats_failures()),
                ("nearcache_relay_takeovers_total", "Times this relay became the active one.", status.takeovers()),
            ];
            for (name, help, value) in counters {
                out.counter(name, help, &[], value as f64);
            }
            let queued = status.queued() as f64;
            let help = "Keys (and other events) waiting to be published.";
            out.gauge("nearcache_relay_queued", help, &[], queued);
            source.render(&[], &mut out);
            let out = out.finish();
            (StatusCode::OK, out)
        }
        _ => (StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    let content_type = if path == "/metrics" {
        Exposition::CONTENT_TYPE
    } else {
        "application/json"
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("relay: shutting down");
}
