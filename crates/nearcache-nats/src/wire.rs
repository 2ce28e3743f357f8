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
        assert!(Message::parse(b"\xff").is_err());
    }
}
