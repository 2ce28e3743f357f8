//! The lease that lets one relay of many publish.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::relay::{new_epoch, RelayConfig, RelayStatus, Role};

/// The lease: the one message of a subject in a stream of leases whose messages live for the
/// lease's time to live. Taking it is a publication that the stream accepts only if the
/// subject holds no message (`Nats-Expected-Last-Subject-Sequence: 0`); renewing it, one that
/// it accepts only if the last message is still ours. This is what JetStream's key-value
/// store does underneath (`create`, `update` with a revision), without its client-side API.
pub(crate) struct Lease {
    js: jetstream::Context,
    stream: String,
    subject: String,
    sequence: u64,
    pub(crate) epoch: String,
    pub(crate) every: Duration,
    ttl: Duration,
    /// When the last publication that the stream took was sent: the lease lasts at least
    /// its time to live from then.
    since: Instant,
}

impl Lease {
    /// Waits until this relay holds the lease; `None` on shutdown.
    pub(crate) async fn acquire(
        js: &jetstream::Context,
        config: &RelayConfig,
        ttl: Duration,
        status: &RelayStatus,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let stream = config.lease_bucket.to_uppercase();
        js.get_or_create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{}.>", config.lease_bucket)],
            max_age: ttl,
            max_messages_per_subject: 1,
            ..stream::Config::default()
        })
        .await?;
        let subject = format!(
            "{}.{}",
            config.lease_bucket,
            config.prefix.replace('.', "_")
        );
        let mut lease = Self {
            js: js.clone(),
            stream,
            subject,
            sequence: 0,
            epoch: new_epoch(),
            every: ttl / 3,
            ttl,
            since: Instant::now(),
        };
        let mut said = false;
        loop {
            if lease.publish(0).await {
                return Ok(Some(lease));
            }
            if !said {
                tracing::info!(subject = %lease.subject, "relay: another relay holds the lease: standing by");
                said = true;
            }
            status.set_role(Role::Standby);
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(lease.every) => {}
            }
        }
    }

    /// Publishes our epoch on the lease's subject if its last message has the sequence
    /// `expected` (0: none); whether the stream took it.
    async fn publish(&mut self, expected: u64) -> bool {
        let start = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let sent = async {
            let ack = self
                .js
                .publish_with_headers(
                    self.subject.clone(),
                    headers,
                    Bytes::from(self.epoch.clone()),
                )
                .await?
                .await?;
            anyhow::Ok(ack.sequence)
        };
        match tokio::time::timeout(Duration::from_secs(5), sent).await {
            Ok(Ok(sequence)) => {
                self.sequence = sequence;
                self.since = start;
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "relay: lease refused");
                false
            }
            Err(_) => false,
        }
    }

    /// Until when this relay surely holds the lease (a tenth of the TTL spare, for clocks
    /// that run at different rates): past it, another relay may have taken it.
    pub(crate) fn held_until(&self) -> Instant {
        self.since + self.ttl - self.ttl / 10
    }

    /// Renews the lease; `false` if another relay holds it now (or NATS does not answer).
    pub(crate) async fn renew(&mut self) -> bool {
        let ours = self.sequence;
        let renewed = self.publish(ours).await;
        if !renewed {
            tracing::warn!("relay: cannot renew the lease");
        }
        renewed
    }

    /// Lets the lease go at once, so that a standby takes over without waiting for it to
    /// expire.
    pub(crate) async fn release(self) {
        if let Ok(stream) = self.js.get_stream(&self.stream).await {
            let _ = stream.purge().filter(self.subject.clone()).await;
        }
    }
}
