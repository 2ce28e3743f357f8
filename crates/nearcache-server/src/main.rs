//! `nearcache-server`: flags and environment, telemetry, signals; the rest is in the library.
//!
//! Exit status: 0 stopped with every request answered, 1 a fatal error, 2 a bad configuration
//! (exactly one line on stderr, naming the flag or the environment variable that was set), 3
//! stopped when the shutdown timeout ran out.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use nearcache_server::{Application, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

// jemalloc rather than the system allocator: each request allocates and frees buffers of a few
// KiB between the small long-lived allocations of cached entries, and glibc's allocator keeps
// the pages of such a mix resident (measured with `cargo xtask soak`: RSS several times the
// heap and growing through a run). jemalloc's size classes and page purging keep it flat.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bad configuration.
const CONFIG: u8 = 2;
/// The shutdown timeout ran out before every request finished.
const NOT_DRAINED: u8 = 3;

fn main() -> ExitCode {
    let (config, matches) = match parse() {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let bad = |message: String| {
        eprintln!("nearcache-server: {}", name_sources(&message, &matches));
        ExitCode::from(CONFIG)
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => filter,
            Err(e) => return bad(format!("RUST_LOG: invalid filter {spec:?}: {e}")),
        },
        _ => EnvFilter::new("info,sqlx=warn"),
    };
    let migrating = matches!(config.command, Some(Command::Migrate));
    let database_url = config.database_url.clone();
    let db_timeout = config.db_timeout;
    let log_format = config.log_format;
    let built = if migrating {
        if database_url.is_none() {
            return bad(nearcache_server::ConfigError::NoDatabaseUrl.to_string());
        }
        None
    } else {
        match config
            .into_settings()
            .and_then(|settings| Ok((settings.listen, Application::build(settings)?)))
        {
            Ok(built) => Some(built),
            Err(e) => return bad(e.to_string()),
        }
    };
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(filter);
    match log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nearcache-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some((addr, app)) = built else {
        let url = database_url.unwrap_or_default();
        return match runtime.block_on(nearcache_server::migrate(&url, db_timeout)) {
            Ok(applied) => {
                println!("nearcache-server: migrations applied ({applied} new)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nearcache-server: migrate: {e:#}");
                ExitCode::FAILURE
            }
        };
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        app.run_until_stopped(listener, shutdown_signal()).await
    });
    match result {
        Ok(stopped) if stopped.drained => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(NOT_DRAINED),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nearcache-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags and environment. Help and version print and exit 0; anything clap refuses exits 2
/// with one line, naming the environment variable when that is where the value came from.
fn parse() -> Result<(Config, ArgMatches), ExitCode> {
    let command = Config::command();
    let matches = command.clone().try_get_matches().map_err(|e| {
        use clap::error::{ContextKind, ErrorKind};
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let rendered = e.render().to_string();
        let mut line = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        // clap names the flag even when the value came from its environment variable.
        if let Some(clap::error::ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            let long = arg.split_whitespace().next().unwrap_or_default();
            let from_env = command.get_arguments().find_map(|a| {
                let env = a.get_env()?.to_str()?;
                let flag_given =
                    std::env::args().any(|x| x == long || x.starts_with(&format!("{long}=")));
                (a.get_long().map(|l| format!("--{l}")).as_deref() == Some(long)
                    && !flag_given
                    && std::env::var_os(env).is_some())
                .then(|| env.to_string())
            });
            if let Some(env) = from_env {
                line = line.replace(&format!("'{arg}'"), &env);
            }
        }
        eprintln!("nearcache-server: {line}");
        ExitCode::from(CONFIG)
    })?;
    let config = Config::from_arg_matches(&matches).map_err(|e| {
        eprintln!(
            "nearcache-server: {}",
            e.to_string().lines().next().unwrap_or_default()
        );
        ExitCode::from(CONFIG)
    })?;
    Ok((config, matches))
}

/// Replaces each `--flag` a message names with its environment variable when the value came
/// from there, so that the line names what the operator actually set.
fn name_sources(message: &str, matches: &ArgMatches) -> String {
    let mut out = message.to_string();
    for arg in Config::command().get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::EnvVariable) {
            out = out.replace(&format!("--{long}"), &env.to_string_lossy());
        }
    }
    out
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
