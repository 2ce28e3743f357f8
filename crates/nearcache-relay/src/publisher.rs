//! The relay's publisher: what the source reported, in order, as messages on the changes
//! subject. A table's keys of one commit travel together (in messages of at most
//! [`KEYS_PER_MESSAGE`] keys), publications are pipelined (at most [`WINDOW`] acknowledgements
//! awaited at once, in order), and heartbeats take their turn in the same queue, so that a
//! heartbeat published says everything queued before it was published too.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use nearcache_nats::{Change, Message, Reads};

use crate::relay::{RelayConfig, RelaySource, RelayStatus};

/// Most keys in one message: each well under NATS' default payload limit (1 MiB) even with
/// long keys.
pub(crate) const KEYS_PER_MESSAGE: usize = 500;

/// Past this many keys of one table in one commit, the relay publishes a flush of the table
/// instead, as the triggers do past 40 000 bytes of keys: every instance would otherwise
/// evict each key in turn before it gets to the next commit.
pub(crate) const FLUSH_PAST_KEYS: usize = 1_000;

/// Most publications whose acknowledgement is awaited at once. JetStream stores a connection's
/// publications in the order they were sent, so a window keeps the order and spares a round
/// trip per message.
pub(crate) const WINDOW: usize = 64;

/// How long a publication may wait for its acknowledgement before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Publisher<'a> {
    js: &'a jetstream::Context,
    subject: String,
    epoch: String,
    seq: u64,
    pub(crate) coherent: bool,
    /// The commit position of the changes being published, where the source knows it.
    pub(crate) lsn: Option<String>,
    status: &'a RelayStatus,
    /// Publications sent whose acknowledgement has not been read: sequence, when it was sent,
    /// future.
    acks: VecDeque<(u64, Instant, PublishAckFuture)>,
    /// With a lease, until when this relay surely holds it: nothing is published past it.
    pub(crate) until: Option<Instant>,
    deposed: bool,
}

impl<'a> Publisher<'a> {
    pub(crate) fn new(
        js: &'a jetstream::Context,
        subject: String,
        epoch: String,
        status: &'a RelayStatus,
    ) -> Self {
        Self {
            js,
            subject,
            epoch,
            seq: 0,
            coherent: false,
            lsn: None,
            status,
            acks: VecDeque::new(),
            until: None,
            deposed: false,
        }
    }

    /// Publishes `change`; a table's keys in as many messages as [`KEYS_PER_MESSAGE`] needs,
    /// or past [`FLUSH_PAST_KEYS`] a flush of the table.
    pub(crate) async fn send(&mut self, change: Change) {
        match change {
            Change::Keys { table, keys } if keys.len() > FLUSH_PAST_KEYS => {
                self.send_one(Change::FlushTable { table }).await;
            }
            Change::Keys { table, keys } if keys.len() > KEYS_PER_MESSAGE => {
                for chunk in keys.chunks(KEYS_PER_MESSAGE) {
                    self.send_one(Change::Keys {
                        table: table.clone(),
                        keys: chunk.to_vec(),
                    })
                    .await;
                }
            }
            change => self.send_one(change).await,
        }
    }

    /// Sends one message and, when the window is full, waits for the oldest acknowledgement.
    /// A failure is logged and counted; its sequence number is spent all the same, so that
    /// instances see the gap and flush.
    async fn send_one(&mut self, change: Change) {
        // A relay stalled past its lease (SIGSTOP, a starved runtime) may have been replaced:
        // it stops at its first publication rather than interleave with the new relay.
        if self.deposed || self.until.is_some_and(|u| Instant::now() >= u) {
            if !self.deposed {
                tracing::warn!("relay: the lease may have expired: publishing nothing more");
            }
            self.deposed = true;
            return;
        }
        self.seq += 1;
        let message = Message {
            epoch: self.epoch.clone(),
            seq: self.seq,
            coherent: self.coherent,
            lsn: match change {
                Change::Heartbeat { .. } => None,
                _ => self.lsn.clone(),
            },
            change,
        };
        let sent = self
            .js
            .publish(self.subject.clone(), Bytes::from(message.to_bytes()));
        match tokio::time::timeout(ACK_TIMEOUT, sent).await {
            Ok(Ok(ack)) => self.acks.push_back((self.seq, Instant::now(), ack)),
            Ok(Err(e)) => self.failed(self.seq, &e.to_string()),
            Err(_) => self.failed(self.seq, "not sent in 5 s"),
        }
        while self.acks.len() >= WINDOW {
            self.settle_oldest().await;
        }
    }

    /// Whether a publication was refused because the lease may have expired.
    pub(crate) fn deposed(&self) -> bool {
        self.deposed
    }

    /// Waits for every acknowledgement in flight.
    pub(crate) async fn drain(&mut self) {
        while !self.acks.is_empty() {
            self.settle_oldest().await;
        }
    }

    /// Reads the oldest acknowledgement, waiting at most until its publication is
    /// [`ACK_TIMEOUT`] old: during a NATS outage a full window times out in about that long, not
    /// in that long per publication.
    async fn settle_oldest(&mut self) {
        let Some((seq, sent, ack)) = self.acks.pop_front() else {
            return;
        };
        let deadline = tokio::time::Instant::from_std(sent + ACK_TIMEOUT);
        match tokio::time::timeout_at(deadline, ack.into_future()).await {
            Ok(Ok(_)) => {
                self.status.published_one();
            }
            Ok(Err(e)) => self.failed(seq, &e.to_string()),
            Err(_) => self.failed(seq, "not acknowledged in 5 s"),
        }
    }

    fn failed(&self, seq: u64, error: &str) {
        self.status.publish_failed();
        tracing::warn!(%error, seq, "relay: publish failed");
    }
}

/// The relay's heartbeat: how far behind its source reads, how long the heartbeat waited in
/// the queue (`queued`: at most that old is the oldest change not yet published when it goes
/// out), and how the relay reads the database.
pub(crate) fn heartbeat(
    config: &RelayConfig,
    status: &RelayStatus,
    queued_since: Instant,
) -> Change {
    Change::Heartbeat {
        lag_micros: status.source().snapshot().heartbeat_rtt_micros,
        queued_micros: Some(u64::try_from(queued_since.elapsed().as_micros()).unwrap_or(u64::MAX)),
        every_micros: Some(
            u64::try_from(config.heartbeat_interval.as_micros()).unwrap_or(u64::MAX),
        ),
        reads: Some(match &config.source {
            RelaySource::Wal(wal) => Reads::Wal {
                publication: wal.publication.clone(),
            },
            RelaySource::Notify(listen) => Reads::Notify {
                channel: listen.channel().to_string(),
            },
        }),
    }
}

/// Counters the publisher keeps.
impl RelayStatus {
    fn published_one(&self) {
        self.0.published.fetch_add(1, Relaxed);
    }

    fn publish_failed(&self) {
        self.0.publish_errors.fetch_add(1, Relaxed);
    }
}
