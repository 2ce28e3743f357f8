//! Decoding of the `pgoutput` messages (protocol version 1): Begin and Commit, those that name
//! rows (Relation, Insert, Update, Delete, Truncate) and logical messages (the heartbeat). Type
//! and Origin messages carry nothing we need and are skipped.

use std::fmt;

/// A decoded change message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    /// A transaction's changes follow.
    Begin { xid: u32 },
    /// The transaction committed; `end_lsn` is the end of its commit record.
    Commit { end_lsn: u64 },
    /// A logical message (`pg_logical_emit_message`).
    Message { prefix: &'a [u8], content: &'a [u8] },
    /// Describes a relation; sent before the first change of it in a session and after DDL.
    Relation(Relation),
    /// A row inserted.
    Insert { relation: u32, new: Tuple<'a> },
    /// A row updated: the old key or the old row, when sent, and the new row.
    Update {
        relation: u32,
        old: Option<Old<'a>>,
        new: Tuple<'a>,
    },
    /// A row deleted: its old key (or old row).
    Delete { relation: u32, old: Tuple<'a> },
    /// Relations truncated.
    Truncate { relations: Vec<u32> },
    /// A message we do not need (Type, Origin).
    Skipped,
}

/// A relation as pgoutput describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) id: u32,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<Column>,
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// Part of the replica identity (the primary key by default).
    pub(crate) key: bool,
    /// Of a built-in fixed-length type: stored inline, never TOASTed, so never sent as
    /// [`Value::Unchanged`].
    pub(crate) fixed: bool,
}

/// Whether a column of type `oid` is of a built-in fixed-length type (bool, the integers,
/// oid, the floats, money, the date and time types, uuid, pg_lsn). Any other type, a domain
/// over one of these included, counts as one that may be TOASTed.
fn fixed_length(oid: u32) -> bool {
    matches!(
        oid,
        16 | 20
            | 21
            | 23
            | 26
            | 700
            | 701
            | 790
            | 1082
            | 1083
            | 1114
            | 1184
            | 1186
            | 1266
            | 2950
            | 3220
    )
}

/// One column's value in a tuple, borrowed from the message it was decoded from (decoding a
/// row allocates nothing per column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Value<'a> {
    Null,
    /// A TOASTed value that did not change and was not sent.
    Unchanged,
    /// The value in text (or binary) form.
    Data(&'a [u8]),
}

/// A row's values, in the relation's column order.
pub(crate) type Tuple<'a> = Vec<Value<'a>>;

/// What an UPDATE says of the row before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Old<'a> {
    /// `K`: the replica identity's columns only, every other one null. Sent when the identity
    /// changed, and also when it did not but a value of it is stored out of line (TOASTed):
    /// its nulls are not the old values.
    Key(Tuple<'a>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Row(Tuple<'a>),
}

impl<'a> Old<'a> {
    /// The tuple, whichever kind.
    pub(crate) fn tuple(&self) -> &Tuple<'a> {
        match self {
            Old::Key(t) | Old::Row(t) => t,
        }
    }

    /// The whole old row, if that is what was sent.
    pub(crate) fn row(&self) -> Option<&Tuple<'a>> {
        match self {
            Old::Row(t) => Some(t),
            Old::Key(_) => None,
        }
    }
}

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable pgoutput message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!(
                "{n} bytes wanted, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn cbytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let (s, rest) = (&self.buf[..end], &self.buf[end + 1..]);
        self.buf = rest;
        Ok(s)
    }

    fn cstring(&mut self) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(self.cbytes()?).into_owned())
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16()?;
        // Sized once: collecting through `Result` would grow the vector from four.
        let mut values = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32()? as usize;
                    Value::Data(self.take(len)?)
                }
                k => return Err(DecodeError(format!("unknown column kind {k:#x}"))),
            });
        }
        Ok(values)
    }
}

/// Decodes one message.
pub(crate) fn decode(data: &[u8]) -> Result<Change<'_>, DecodeError> {
    let mut r = Reader { buf: data };
    match r.u8()? {
        b'B' => {
            let _final_lsn = r.u64()?;
            let _commit_time = r.u64()?;
            Ok(Change::Begin { xid: r.u32()? })
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Ok(Change::Commit { end_lsn: r.u64()? })
        }
        b'M' => {
            let _flags = r.u8()?;
            let _lsn = r.u64()?;
            let prefix = r.cbytes()?;
            let len = r.u32()? as usize;
            Ok(Change::Message {
                prefix,
                content: r.take(len)?,
            })
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstring()?;
            let name = r.cstring()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.cstring()?;
                    let oid = r.u32()?;
                    let _typmod = r.u32()?;
                    Ok(Column {
                        name,
                        key: flags & 1 == 1,
                        fixed: fixed_length(oid),
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            Ok(Change::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = r.u32()?;
            expect(&mut r, b'N')?;
            Ok(Change::Insert {
                relation,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation = r.u32()?;
            let (old, new) = match r.u8()? {
                kind @ (b'K' | b'O') => {
                    let old = r.tuple()?;
                    expect(&mut r, b'N')?;
                    let old = if kind == b'K' {
                        Old::Key(old)
                    } else {
                        Old::Row(old)
                    };
                    (Some(old), r.tuple()?)
                }
                b'N' => (None, r.tuple()?),
                k => return Err(DecodeError(format!("update: unexpected {k:#x}"))),
            };
            Ok(Change::Update { relation, old, new })
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Ok(Change::Delete {
                    relation,
                    old: r.tuple()?,
                }),
                k => Err(DecodeError(format!("delete: unexpected {k:#x}"))),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Ok(Change::Truncate { relations })
        }
        b'Y' | b'O' => Ok(Change::Skipped),
        k => Err(DecodeError(format!("unknown message type {k:#x}"))),
    }
}

fn expect(r: &mut Reader<'_>, want: u8) -> Result<(), DecodeError> {
    match r.u8()? {
        b if b == want => Ok(()),
        b => Err(DecodeError(format!(
            "expected {:?}, got {b:#x}",
            char::from(want)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("<unchanged>") => out.push(b'u'),
                Some(s) => {
                    out.push(b't');
                    out.extend((s.len() as u32).to_be_bytes());
                    out.extend(s.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn relations_and_changes_decode() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0users\0");
        rel.push(b'd');
        rel.extend(2u16.to_be_bytes());
        for (flags, name) in [(1u8, "id"), (0, "name")] {
            rel.push(flags);
            rel.extend(name.as_bytes());
            rel.push(0);
            rel.extend(25u32.to_be_bytes());
            rel.extend((-1i32).to_be_bytes());
        }
        let Change::Relation(r) = decode(&rel).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((r.id, r.name.as_str()), (16384, "users"));
        assert_eq!(
            r.columns.iter().map(|c| c.key).collect::<Vec<_>>(),
            [true, false]
        );

        let mut upd = vec![b'U'];
        upd.extend(16384u32.to_be_bytes());
        upd.push(b'K');
        upd.extend(tuple(&[Some("a"), None]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("b"), Some("<unchanged>")]));
        assert_eq!(
            decode(&upd).unwrap(),
            Change::Update {
                relation: 16384,
                old: Some(Old::Key(vec![Value::Data(b"a"), Value::Null])),
                new: vec![Value::Data(b"b"), Value::Unchanged],
            }
        );

        let mut trunc = vec![b'T'];
        trunc.extend(2u32.to_be_bytes());
        trunc.push(0);
        trunc.extend(1u32.to_be_bytes());
        trunc.extend(2u32.to_be_bytes());
        assert_eq!(
            decode(&trunc).unwrap(),
            Change::Truncate {
                relations: vec![1, 2]
            }
        );
    }

    #[test]
    fn transactions_and_logical_messages_decode() {
        let mut begin = vec![b'B'];
        begin.extend(0x100u64.to_be_bytes());
        begin.extend(7u64.to_be_bytes());
        begin.extend(4242u32.to_be_bytes());
        assert_eq!(decode(&begin).unwrap(), Change::Begin { xid: 4242 });

        let mut commit = vec![b'C', 0];
        commit.extend(0x100u64.to_be_bytes());
        commit.extend(0x1_0000_0180u64.to_be_bytes());
        commit.extend(7u64.to_be_bytes());
        assert_eq!(
            decode(&commit).unwrap(),
            Change::Commit {
                end_lsn: 0x1_0000_0180
            }
        );

        let mut message = vec![b'M', 0];
        message.extend(0x100u64.to_be_bytes());
        message.extend(b"nearcache_hb\0");
        message.extend(3u32.to_be_bytes());
        message.extend(b"a:1");
        assert_eq!(
            decode(&message).unwrap(),
            Change::Message {
                prefix: b"nearcache_hb",
                content: b"a:1"
            }
        );
        message.truncate(message.len() - 1);
        assert!(decode(&message).is_err(), "content shorter than said");
    }

    #[test]
    fn truncated_or_unknown_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"B\0\0",
            b"C\0",
            b"M\0\0\0\0\0\0\0\0\0prefix",
            b"Z",
            b"I\0\0",
            b"I\0\0\0\x01X",
            b"U\0\0\0\x01Q",
            b"R\0\0\0\x01public",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
