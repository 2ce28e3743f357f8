//! The soak's system: its database made afresh, migrated and seeded, and the release
//! processes under test (two instances, and a relay when they follow one).

use anyhow::Result;

use super::{Args, DATABASE, POOL_SIZE};
use crate::instance::Instance;
use crate::seed;

/// The stream the soak's relay publishes on, apart from any other relay's.
const STREAM: &str = "NEARCACHE_SOAK";

/// A database of the soak's own, made afresh, migrated as users do, and seeded.
pub(super) async fn prepare(args: &Args, admin: &str, url: &str) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await?;
    // DATABASE is a constant of ours.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"
    )))
    .execute(&pool)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || crate::migrate(&url)).await??;
    }
    if args.source == "notify" {
        // LISTEN needs the triggers, which the migrations leave out where the WAL is decoded.
        crate::choose_source(url, "notify").await?;
    }
    eprintln!("    seeding {} users", args.users);
    seed::seed_users(url, args.users).await
}

/// The processes under test.
pub(super) struct Fleet {
    pub(super) instances: Vec<Instance>,
    /// Behind a relay: one release relay reads the WAL and publishes on a stream of the soak's
    /// own.
    pub(super) relay: Option<Instance>,
    /// Each instance's base URL.
    pub(super) bases: Vec<String>,
    /// Where the faults' evidence (the source's counters) is read: the instances, or the relay
    /// they follow.
    pub(super) evidence: Vec<String>,
}

impl Fleet {
    /// Starts the relay if the source is `nats`, then two instances, each waited for until
    /// coherent.
    pub(super) async fn start(
        args: &Args,
        url: &str,
        binary: &std::path::Path,
        client: &reqwest::Client,
    ) -> Result<Self> {
        let heartbeat_timeout = format!("{}ms", args.heartbeat_timeout.as_millis());
        let capacity = args.capacity.to_string();
        let pool_size = POOL_SIZE.to_string();
        let nats = xtask::proxy::nats_url();
        let mut relay = None;
        let mut source_flags = vec!["--source", args.source.as_str()];
        if args.source == "nats" {
            let relay_binary = crate::instance::build("nearcache-relay", true)?;
            let port = crate::instance::port_near(0)?;
            let r = Instance::start(
                &relay_binary,
                "soak-relay",
                url,
                port,
                &["--nats-url", &nats, "--nats-stream", STREAM],
            )?;
            eprintln!(
                "    relay: {} (log: {})",
                r.url("/healthz"),
                r.log.display()
            );
            relay = Some(r);
            source_flags.extend(["--nats-url", &nats, "--nats-stream", STREAM]);
        }
        let mut instances = Vec::new();
        for i in 0..2 {
            let port = crate::instance::port_near(0)?;
            let mut inst = Instance::start(
                &binary.to_path_buf(),
                &format!("soak-{i}"),
                url,
                port,
                &[
                    source_flags.as_slice(),
                    &[
                        "--cache-capacity",
                        &capacity,
                        "--heartbeat-timeout",
                        &heartbeat_timeout,
                        "--db-pool-size",
                        &pool_size,
                    ],
                ]
                .concat(),
            )?;
            inst.ready(client, "coherent").await?;
            instances.push(inst);
        }
        let bases: Vec<String> = instances.iter().map(|i| i.url("")).collect();
        let evidence = match &relay {
            Some(r) => vec![r.url("")],
            None => bases.clone(),
        };
        Ok(Self {
            instances,
            relay,
            bases,
            evidence,
        })
    }

    /// Stops every process; returns each one's name and, if it had exited before, how.
    pub(super) fn stop(&mut self) -> Vec<(String, Option<String>)> {
        let mut exits = Vec::new();
        for (i, inst) in self.instances.iter_mut().enumerate() {
            exits.push((format!("#{i}"), inst.exited()));
            inst.stop();
        }
        if let Some(r) = self.relay.as_mut() {
            exits.push(("the relay".to_string(), r.exited()));
            r.stop();
        }
        exits
    }
}
