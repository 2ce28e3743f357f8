//! The WAL source's loop: check the database, create a temporary slot, stream, decode, apply
//! at commit, heartbeat through the WAL, reconnect.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache_source::{
    sleep_until_opt, supervise, AbortOnDrop, Handler, SourceState, SourceStatus,
};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};

use crate::pgoutput::{self, Change, Relation, Tuple, Value};
use crate::WalConfig;

/// The prefix of the source's heartbeat messages (`pg_logical_emit_message`).
const HEARTBEAT_PREFIX: &str = "nearcache_hb";

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("checking the database: {0}")]
    Check(#[source] tokio_postgres::Error),
    #[error("the database cannot be trusted to deliver: {0}")]
    Misconfigured(String),
    #[error("replication: {0}")]
    Replication(#[source] pgwire_replication::PgWireError),
    #[error("replication stream closed")]
    Closed,
    #[error("{0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("heartbeat not back through the WAL within {0:?}")]
    HeartbeatTimeout(Duration),
}

/// Runs the WAL source until `shutdown` completes. Never returns early: every failure leads to
/// [`Handler::bypass`] and a reconnect with a new slot. On shutdown the handler is put in
/// bypass too.
///
/// # Panics
/// If `config` has a zero heartbeat interval or timeout.
pub async fn run<H>(
    config: WalConfig,
    handler: Arc<H>,
    status: SourceStatus,
    shutdown: impl Future<Output = ()>,
) where
    H: Handler + ?Sized,
{
    config.validate().expect("invalid WAL source configuration");
    let nonce = format!("{:016x}", rand::random::<u64>());
    let backoff = (config.backoff_min, config.backoff_max);
    supervise("wal", backoff, &*handler, &status, shutdown, || {
        session(&config, &*handler, &status, &nonce)
    })
    .await;
}

/// What the control connection learnt: each published table's ignored columns.
type Ignored = HashMap<String, Vec<String>>;

/// Checks the database on the ordinary (control) connection: logical decoding on, the
/// publication there with every cached table in it. Returns the ignored columns per table.
async fn check(
    control: &tokio_postgres::Client,
    config: &WalConfig,
) -> Result<Ignored, SessionError> {
    let mut problems = Vec::new();
    let wal_level: String = control
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(SessionError::Check)?
        .get(0);
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is {wal_level}: set wal_level = logical (and restart Postgres) for the WAL source, or use the LISTEN source"
        ));
    }
    let published: Vec<String> = control
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(SessionError::Check)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = control
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(SessionError::Check)?
        .is_some();
    if !exists {
        problems.push(format!(
            "publication {} does not exist (install nearcache: nearcache_pg::install, or sql/0003_nearcache_install.sql)",
            config.publication
        ));
    }
    for t in &config.tables {
        if exists && !published.contains(t) {
            problems.push(format!(
                "table {t} is not in publication {}: SELECT nearcache_attach('{t}', <key column>, <ignored columns>)",
                config.publication
            ));
        }
    }
    if !problems.is_empty() {
        return Err(SessionError::Misconfigured(problems.join("; ")));
    }
    let ignored = match control
        .query(
            "SELECT c.relname::text, a.ignore_columns
               FROM nearcache_attached a JOIN pg_class c ON c.oid = a.tbl",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        // Tables published by hand, without nearcache_attach: nothing is ignored.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ignored::new()
        }
        Err(e) => return Err(SessionError::Check(e)),
    };
    Ok(ignored)
}

/// One stream's life. Returns why it ended and whether it got as far as streaming.
async fn session<H: Handler + ?Sized>(
    config: &WalConfig,
    handler: &H,
    status: &SourceStatus,
    nonce: &str,
) -> (SessionError, bool) {
    match stream(config, handler, status, nonce).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    }
}

async fn stream<H: Handler + ?Sized>(
    config: &WalConfig,
    handler: &H,
    status: &SourceStatus,
    nonce: &str,
) -> Result<std::convert::Infallible, (SessionError, bool)> {
    let not_yet = |e| (e, false);
    let timeout = config.connect_timeout;
    let (control, connection) =
        tokio::time::timeout(timeout, config.url.connect(config.url.config()))
            .await
            .map_err(|_| not_yet(SessionError::Timeout("connecting")))?
            .map_err(|e| not_yet(SessionError::Connect(e)))?;
    let control = Arc::new(control);
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "wal source: control connection ended");
        }
    }));
    let ignored = match tokio::time::timeout(timeout, check(&control, config)).await {
        Ok(Ok(ignored)) => {
            status.set_problem(None);
            ignored
        }
        Ok(Err(e)) => {
            if let SessionError::Misconfigured(p) = &e {
                status.set_problem(Some(p.clone()));
            }
            return Err(not_yet(e));
        }
        Err(_) => return Err(not_yet(SessionError::Timeout("checking the database"))),
    };

    // A temporary slot belongs to the replication session that creates it: it goes when the
    // session ends, however it ends, and retains no WAL after that.
    let slot = format!("nearcache_{:016x}", rand::random::<u64>());
    let repl_config = ReplicationConfig::new(
        config.host.clone(),
        config.user.clone(),
        config.password.clone(),
        config.database.clone(),
        slot.clone(),
        config.publication.clone(),
    )
    .with_port(config.port)
    .with_tls(config.replication_tls())
    .with_status_interval(Duration::from_secs(1))
    .with_application_name("nearcache-wal");
    let mut repl = Replication(
        tokio::time::timeout(timeout, ReplicationClient::connect_gated(repl_config))
            .await
            .map_err(|_| not_yet(SessionError::Timeout("connecting for replication")))?
            .map_err(|e| not_yet(SessionError::Replication(e)))?,
    );
    let create =
        format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT");
    match tokio::time::timeout(timeout, repl.0.simple_query(&create)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            // Usually every slot is taken (max_replication_slots) or the role may not
            // replicate: something an operator must fix, so it is shown, not just logged.
            status.set_problem(Some(format!(
                "cannot create a replication slot: {e} (free slots: max_replication_slots, max_wal_senders; the role needs REPLICATION)"
            )));
            return Err(not_yet(SessionError::Replication(e)));
        }
        Err(_) => return Err(not_yet(SessionError::Timeout("creating the slot"))),
    }
    repl.0
        .start()
        .await
        .map_err(|e| not_yet(SessionError::Replication(e)))?;
    tokio::time::timeout(timeout, repl.0.wait_started())
        .await
        .map_err(|_| not_yet(SessionError::Timeout("starting replication")))?
        .map_err(|e| not_yet(SessionError::Replication(e)))?;
    status.set_problem(None);
    // The slot delivers every change committed after its consistent point; anything before
    // it is flushed away now.
    handler.flush_all();
    handler.coherent();
    status.connected();
    status.set_state(SourceState::Listening);
    tracing::info!(%slot, publication = %config.publication, "wal source: streaming, cache coherent");

    let streaming = |e| (e, true);
    let mut decoder = Decoder::new(ignored, config.digest_capacity);
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u64 = 0;
    let mut pending: Option<(String, Instant)> = None;
    loop {
        let deadline = pending
            .as_ref()
            .map(|(_, sent)| tokio::time::Instant::from_std(*sent + config.heartbeat_timeout));
        tokio::select! {
            event = repl.0.recv() => match event {
                Ok(Some(event)) => {
                    let ours = pending.as_ref().map(|(m, _)| m.as_str());
                    let back = decoder
                        .event(event, handler, status, &repl.0, ours)
                        .map_err(|e| streaming(e.into()))?;
                    if back {
                        if let Some((_, sent)) = pending.take() {
                            let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            status.heartbeat(rtt);
                        }
                    }
                }
                Ok(None) => return Err(streaming(SessionError::Closed)),
                Err(e) => return Err(streaming(SessionError::Replication(e))),
            },
            _ = ticker.tick(), if pending.is_none() => {
                sequence += 1;
                let message = format!("{nonce}:{sequence}");
                pending = Some((message.clone(), Instant::now()));
                let control = control.clone();
                // From a task of its own, so that a server that stops answering cannot stall
                // this loop; the deadline below catches it.
                tokio::spawn(async move {
                    if let Err(e) = control
                        .execute(
                            "SELECT pg_logical_emit_message(false, $1, $2)",
                            &[&HEARTBEAT_PREFIX, &message],
                        )
                        .await
                    {
                        tracing::debug!(error = %e, "wal source: heartbeat not sent");
                    }
                });
            }
            () = sleep_until_opt(deadline) => {
                status.heartbeat_timeout();
                return Err(streaming(SessionError::HeartbeatTimeout(config.heartbeat_timeout)));
            }
        }
    }
}

/// Stops the replication client when the session ends, so that its walsender (and with it the
/// temporary slot) goes at once.
struct Replication(ReplicationClient);

impl Drop for Replication {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A change decoded within a transaction, applied at its commit.
enum Pending {
    Keys(String, Vec<String>),
    Flush(String),
}

/// Past this many keys in one transaction, its changes become table flushes: a statement
/// that touches a million rows needs no million strings in memory.
const MAX_PENDING_KEYS: usize = 10_000;

/// Turns the stream's events into handler calls, at each transaction's commit.
struct Decoder {
    relations: HashMap<u32, Relation>,
    ignored: Ignored,
    /// Per table and key, a hash of each watched column's value as last seen.
    digests: HashMap<(String, String), Vec<u64>>,
    capacity: usize,
    pending: Vec<Pending>,
    /// Keys in `pending`.
    pending_keys: usize,
    /// Tables of the current transaction that will be flushed whole.
    flushed: Vec<String>,
}

impl Decoder {
    fn new(ignored: Ignored, capacity: usize) -> Self {
        Self {
            relations: HashMap::new(),
            ignored,
            digests: HashMap::new(),
            capacity: capacity.max(1),
            pending: Vec::new(),
            pending_keys: 0,
            flushed: Vec::new(),
        }
    }

    /// Handles one event. Returns whether it was our pending heartbeat, back.
    fn event<H: Handler + ?Sized>(
        &mut self,
        event: ReplicationEvent,
        handler: &H,
        status: &SourceStatus,
        repl: &ReplicationClient,
        heartbeat: Option<&str>,
    ) -> Result<bool, pgoutput::DecodeError> {
        match event {
            ReplicationEvent::Begin { .. } => self.clear_pending(),
            ReplicationEvent::XLogData { data, .. } => self.change(pgoutput::decode(&data)?)?,
            ReplicationEvent::Commit { end_lsn, .. } => {
                let flushed = std::mem::take(&mut self.flushed);
                let pending: Vec<Pending> = self.pending.drain(..).collect();
                self.pending_keys = 0;
                if !pending.is_empty() || !flushed.is_empty() {
                    handler.at_commit(&end_lsn.to_pg_string());
                }
                for p in pending
                    .into_iter()
                    .chain(flushed.into_iter().map(Pending::Flush))
                {
                    status.notification();
                    let cached = match p {
                        Pending::Keys(table, keys) => handler.invalidate(&table, &keys),
                        Pending::Flush(table) => handler.flush_table(&table),
                    };
                    if !cached {
                        status.ignored();
                    }
                }
                // Processed: the slot may let this WAL go.
                repl.update_applied_lsn(end_lsn);
            }
            ReplicationEvent::Message {
                prefix, content, ..
            } => {
                if prefix == HEARTBEAT_PREFIX
                    && heartbeat.is_some_and(|h| h.as_bytes() == &content[..])
                {
                    return Ok(true);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.pending.is_empty() && self.flushed.is_empty() {
                    repl.update_applied_lsn(wal_end);
                }
            }
            // Only bounded replays stop; ours never asks for one.
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(false)
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_keys = 0;
        self.flushed.clear();
    }

    /// Queues a change for the commit; past [`MAX_PENDING_KEYS`], every table of the
    /// transaction is flushed instead.
    fn push(&mut self, p: Pending) {
        let table = match &p {
            Pending::Keys(t, _) | Pending::Flush(t) => t,
        };
        if self.flushed.contains(table) {
            return;
        }
        if let Pending::Keys(_, keys) = &p {
            self.pending_keys += keys.len();
        }
        self.pending.push(p);
        if self.pending_keys > MAX_PENDING_KEYS {
            for p in self.pending.drain(..) {
                let (Pending::Keys(t, _) | Pending::Flush(t)) = p;
                if !self.flushed.contains(&t) {
                    self.flushed.push(t);
                }
            }
            self.pending_keys = 0;
        }
    }

    fn change(&mut self, change: Change) -> Result<(), pgoutput::DecodeError> {
        match change {
            Change::Relation(r) => {
                self.relations.insert(r.id, r);
            }
            Change::Insert { relation, new } => {
                let (table, key) = self.key(relation, &new)?;
                if let Some(key) = key {
                    self.remember(relation, &key, &new, None);
                    self.push(Pending::Keys(table, vec![key]));
                } else {
                    self.push(Pending::Flush(table));
                }
            }
            Change::Update { relation, old, new } => {
                let (table, new_key) = self.key(relation, &new)?;
                let old_key = match &old {
                    Some(old) => self.key(relation, old)?.1,
                    None => new_key.clone(),
                };
                match (old_key, new_key) {
                    (Some(old_key), Some(new_key)) if old_key != new_key => {
                        self.forget(&table, &old_key);
                        self.remember(relation, &new_key, &new, None);
                        self.push(Pending::Keys(table, vec![old_key, new_key]));
                    }
                    (Some(_), Some(key)) => {
                        if self.remember(relation, &key, &new, old.as_ref()) {
                            self.push(Pending::Keys(table, vec![key]));
                        }
                    }
                    _ => self.push(Pending::Flush(table)),
                }
            }
            Change::Delete { relation, old } => {
                let (table, key) = self.key(relation, &old)?;
                match key {
                    Some(key) => {
                        self.forget(&table, &key);
                        self.push(Pending::Keys(table, vec![key]));
                    }
                    None => self.push(Pending::Flush(table)),
                }
            }
            Change::Truncate { relations } => {
                for id in relations {
                    let table = self.relation(id)?.name.clone();
                    self.digests.retain(|(t, _), _| *t != table);
                    self.push(Pending::Flush(table));
                }
            }
            Change::Skipped => {}
        }
        Ok(())
    }

    fn relation(&self, id: u32) -> Result<&Relation, pgoutput::DecodeError> {
        self.relations
            .get(&id)
            .ok_or_else(|| pgoutput::DecodeError(format!("change of unknown relation {id}")))
    }

    /// The table and the row's key as text (`key::text`); no key if the relation has none or
    /// several key columns, or the key is missing from the tuple.
    fn key(
        &self,
        relation: u32,
        tuple: &Tuple,
    ) -> Result<(String, Option<String>), pgoutput::DecodeError> {
        let r = self.relation(relation)?;
        let keys: Vec<usize> = (0..r.columns.len()).filter(|&i| r.columns[i].key).collect();
        let key = match keys.as_slice() {
            [i] => match tuple.get(*i) {
                Some(Value::Data(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        };
        Ok((r.name.clone(), key))
    }

    /// Records the watched columns of a row as decoded, and returns whether they changed (or
    /// may have: a row never seen counts as changed). Tables that ignore no column always
    /// count as changed, without a digest.
    fn remember(&mut self, relation: u32, key: &str, new: &Tuple, old: Option<&Tuple>) -> bool {
        let Some(r) = self.relations.get(&relation) else {
            return true;
        };
        let Some(ignored) = self.ignored.get(&r.name).filter(|i| !i.is_empty()) else {
            return true;
        };
        let watched = || {
            r.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| !ignored.contains(&c.name))
                .map(|(i, _)| i)
        };
        // With a full replica identity the old row says what changed by itself.
        if let Some(old) = old {
            return watched().any(|i| {
                new.get(i).is_none_or(|n| *n != Value::Unchanged) && old.get(i) != new.get(i)
            });
        }
        let hashes: Vec<Option<u64>> = watched()
            // A tuple shorter than its relation (it should not happen) hashes as unknown.
            .map(|i| match new.get(i) {
                None | Some(Value::Unchanged) => None,
                Some(v) => {
                    let mut h = DefaultHasher::new();
                    v.hash(&mut h);
                    Some(h.finish())
                }
            })
            .collect();
        let slot = (r.name.clone(), key.to_string());
        // A digest of another shape (a column was added since) is as good as none.
        let before = self
            .digests
            .get(&slot)
            .filter(|b| b.len() == hashes.len())
            .cloned();
        let changed = before.as_ref().is_none_or(|b| {
            hashes
                .iter()
                .zip(b)
                .any(|(now, before)| now.is_some_and(|h| h != *before))
        });
        // An unchanged TOASTed column keeps its earlier hash; without one the row stays
        // unknown rather than remembered with a guess.
        let merged: Option<Vec<u64>> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| h.or_else(|| before.as_ref().map(|b| b[i])))
            .collect();
        match merged {
            Some(merged) => {
                if self.digests.len() >= self.capacity && !self.digests.contains_key(&slot) {
                    // Forgetting is safe: a row without a digest counts as changed.
                    self.digests.clear();
                }
                self.digests.insert(slot, merged);
            }
            None => {
                self.digests.remove(&slot);
            }
        }
        changed
    }

    fn forget(&mut self, table: &str, key: &str) {
        self.digests.remove(&(table.to_string(), key.to_string()));
    }
}
