//! The notification payload format of the triggers, version 1.
//!
//! `{"v":1,"table":"users","op":"update","keys":["…"]}` with `op` one of `insert`, `update`,
//! `delete` (with at least one key), or `{"v":1,"table":"users","op":"flush"}`.

use serde::Deserialize;

/// The payload format this crate reads.
pub const FORMAT_VERSION: u64 = 1;

/// What changed in a row-level notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Rows were inserted.
    Insert,
    /// Rows were updated.
    Update,
    /// Rows were deleted.
    Delete,
}

/// A parsed notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These rows of this table changed.
    Rows {
        /// The table, without its schema.
        table: String,
        /// What happened to them.
        op: Op,
        /// Their keys, as text.
        keys: Vec<String>,
    },
    /// Anything in this table may have changed (TRUNCATE, or too many rows to list).
    Flush {
        /// The table, without its schema.
        table: String,
    },
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or not the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A format version this listener does not know.
    #[error("unknown payload version {0}")]
    UnknownVersion(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    v: u64,
    table: String,
    op: String,
    #[serde(default)]
    keys: Option<Vec<String>>,
}

/// Parses a payload of the triggers.
///
/// ```
/// use nearcache_listener::{parse, Op, Payload};
/// let p = parse(r#"{"v":1,"table":"users","op":"update","keys":["a","b"]}"#).unwrap();
/// assert_eq!(p, Payload::Rows { table: "users".into(), op: Op::Update, keys: vec!["a".into(), "b".into()] });
/// assert!(parse("garbage").is_err());
/// ```
///
/// # Errors
/// [`PayloadError`] for anything but a well-formed payload of version 1.
pub fn parse(payload: &str) -> Result<Payload, PayloadError> {
    // Read the version first, so that a newer format with other fields is reported as such.
    #[derive(Deserialize)]
    struct Version {
        v: u64,
    }
    let version: Version =
        serde_json::from_str(payload).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    if version.v != FORMAT_VERSION {
        return Err(PayloadError::UnknownVersion(version.v));
    }
    let raw: Raw =
        serde_json::from_str(payload).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    debug_assert_eq!(raw.v, FORMAT_VERSION);
    if raw.table.is_empty() {
        return Err(PayloadError::Malformed("empty table".into()));
    }
    let op = match raw.op.as_str() {
        "flush" => return Ok(Payload::Flush { table: raw.table }),
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        other => return Err(PayloadError::Malformed(format!("unknown op {other:?}"))),
    };
    match raw.keys {
        Some(keys) if !keys.is_empty() => Ok(Payload::Rows {
            table: raw.table,
            op,
            keys,
        }),
        _ => Err(PayloadError::Malformed("a row change without keys".into())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_every_op() {
        for (op, want) in [
            ("insert", Op::Insert),
            ("update", Op::Update),
            ("delete", Op::Delete),
        ] {
            let p = parse(&format!(
                r#"{{"v":1,"table":"t","op":"{op}","keys":["1"]}}"#
            ))
            .unwrap();
            assert_eq!(
                p,
                Payload::Rows {
                    table: "t".into(),
                    op: want,
                    keys: vec!["1".into()]
                }
            );
        }
        assert_eq!(
            parse(r#"{"v":1,"table":"t","op":"flush"}"#).unwrap(),
            Payload::Flush { table: "t".into() }
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "",
            "garbage",
            "{}",
            "[]",
            "null",
            r#"{"v":"1","table":"t","op":"flush"}"#,
            r#"{"v":1,"op":"flush"}"#,
            r#"{"v":1,"table":"","op":"flush"}"#,
            r#"{"v":1,"table":"t","op":"upsert","keys":["1"]}"#,
            r#"{"v":1,"table":"t","op":"update"}"#,
            r#"{"v":1,"table":"t","op":"update","keys":[]}"#,
            r#"{"v":1,"table":"t","op":"update","keys":[1]}"#,
            r#"{"v":1,"table":"t","op":"update","keys":["1"],"row":{}}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(PayloadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(r#"{"v":2,"table":"t","op":"flush","new":true}"#),
            Err(PayloadError::UnknownVersion(2))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_json_like_input(
            v in any::<u8>(), table in "[a-z]{0,5}", op in "[a-z]{0,7}",
            keys in proptest::option::of(proptest::collection::vec("[a-z0-9]{0,3}", 0..3)),
        ) {
            let payload = serde_json::json!({"v": v, "table": table, "op": op, "keys": keys});
            let _ = parse(&payload.to_string());
        }
    }
}
