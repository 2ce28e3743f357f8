//! The heartbeat: a logical message the source sends itself through the WAL, whose return
//! through the slot (and the gate) shows that the stream delivers.

use std::sync::Arc;
use std::time::Instant;

use crate::decoder::HEARTBEAT_PREFIX;

/// A heartbeat sent through the WAL.
pub(crate) struct Heartbeat {
    pub(crate) message: String,
    pub(crate) sent: Instant,
    /// Back through the slot; complete once the poll with this number (one that began after
    /// it came back) has applied what was visible: heartbeats travel behind the gate.
    pub(crate) back: Option<u64>,
}

impl Heartbeat {
    /// Sends `message` on the control connection from a task of its own, so that a server that
    /// stops answering cannot stall the session; the heartbeat's deadline catches it.
    pub(crate) fn send(control: &Arc<tokio_postgres::Client>, message: String) -> Self {
        let sent = Self {
            message: message.clone(),
            sent: Instant::now(),
            back: None,
        };
        let control = control.clone();
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
        sent
    }
}
