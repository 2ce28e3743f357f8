//! What the relay publishes: one JSON object per message.

use serde::{Deserialize, Serialize};

/// The subject, under the relay's prefix, of every message: `<prefix>.changes`.
pub const CHANGES: &str = "changes";

/// One message of a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The relay's epoch: new at every start or takeover.
    pub epoch: String,
    /// 1, 2, 3… within the epoch, every message counted.
    pub seq: u64,
    /// Whether the relay's own source vouches for what it publishes.
    pub coherent: bool,
    /// The commit position this change comes from, where the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// What changed.
    pub change: Change,
}

/// What a message says changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Rows of a table, by key (`key::text`).
    Keys {
        /// The table.
        table: String,
        /// The keys.
        keys: Vec<String>,
    },
    /// Every row of a table may have changed.
    FlushTable {
        /// The table.
        table: String,
    },
    /// Anything may have changed.
    FlushAll,
    /// Nothing changed; the relay is alive (and says whether its source is coherent, with how
    /// far behind it reads).
    Heartbeat {
        /// The relay's source's last heartbeat round trip, in microseconds.
        lag_micros: u64,
        /// How long this heartbeat waited in the relay's queue, in microseconds: heartbeats
        /// queue behind changes, so the oldest change not yet published when it went out was
        /// at most this old. Absent from relays that do not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queued_micros: Option<u64>,
        /// How often the relay sends heartbeats, in microseconds: an instance that hears none
        /// for this plus its max lag (at most its heartbeat timeout) bypasses. Absent from
        /// relays that do not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        every_micros: Option<u64>,
        /// How the relay reads the database (absent from relays that do not say), so that an
        /// instance can check that its own cached tables are read that way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads: Option<Reads>,
    },
}

/// How a relay reads the database: what an instance behind it checks its cached tables against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Reads {
    /// The WAL, through this publication: each cached table must be in it, with a replica
    /// identity that carries its attached key.
    Wal {
        /// The publication.
        publication: String,
    },
    /// LISTEN on this channel: each cached table must carry nearcache's triggers, enabled
    /// ALWAYS, notifying on it.
    Notify {
        /// The channel.
        channel: String,
    },
}

impl Message {
    /// The JSON of the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message.
    ///
    /// # Errors
    /// When it is not one.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_an_error() {
        let m = Message {
            epoch: "e1".into(),
            seq: 7,
            coherent: true,
            lsn: None,
            change: Change::Keys {
                table: "users".into(),
                keys: vec!["a\"b".into()],
            },
        };
        assert_eq!(Message::parse(&m.to_bytes()).unwrap(), m);
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.contains(r#""kind":"keys""#), "{text}");
        assert!(Message::parse(b"{\"epoch\":1}").is_err());
        // A heartbeat says how the relay reads; one from a relay that does not say still parses.
        let beat = Message {
            change: Change::Heartbeat {
                lag_micros: 3,
                queued_micros: Some(40),
                every_micros: Some(1_000_000),
                reads: Some(Reads::Wal {
                    publication: "nearcache".into(),
                }),
            },
            ..m
        };
        let text = String::from_utf8(beat.to_bytes()).unwrap();
        assert!(
            text.contains(r#""reads":{"via":"wal","publication":"nearcache"}"#),
            "{text}"
        );
        assert_eq!(Message::parse(&beat.to_bytes()).unwrap(), beat);
        let old = br#"{"epoch":"e","seq":1,"coherent":true,"change":{"kind":"heartbeat","lag_micros":5}}"#;
        assert_eq!(
            Message::parse(old).unwrap().change,
            Change::Heartbeat {
                lag_micros: 5,
                queued_micros: None,
                every_micros: None,
                reads: None
            }
        );
        assert!(Message::parse(b"\xff").is_err());
    }
}
