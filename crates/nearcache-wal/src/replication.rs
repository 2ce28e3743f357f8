//! The replication connection: as much of Postgres' streaming replication protocol as logical
//! decoding needs (connect with the URL's TLS policy, authenticate, run a replication command,
//! `START_REPLICATION`, then the CopyBoth stream and its status updates).
//!
//! It reads into one buffer and hands out each message as a slice of it, on the session's own
//! task: no task of its own, no channel, no copy of a message. A read takes whatever the kernel
//! has, often many commits, and the session decodes them all before it waits again.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use nearcache_pgconn::{Endpoint, SslMode, Tls};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

pub(crate) use crate::lsn::Lsn;

/// An error the server sent (an ErrorResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerError {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
}

impl ServerError {
    fn parse(body: &[u8]) -> Self {
        let mut e = ServerError {
            severity: "ERROR".into(),
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or_default();
            match kind {
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                _ => {}
            }
        }
        e
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplicationError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("the server does not take TLS connections, and sslmode={0} requires one")]
    NoTls(&'static str),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("the server says {0}")]
    Server(ServerError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the server closed the connection")]
    Closed,
}

/// One message of the stream, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// WAL data: one pgoutput message.
    XLogData(&'a [u8]),
    /// The server's keepalive: everything up to `wal_end` has been sent.
    KeepAlive { wal_end: Lsn },
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How much the buffer is given to read into, and the least room a read is started with.
const BUFFER: usize = 128 * 1024;
const MIN_READ: usize = 16 * 1024;
/// The largest message taken (Postgres' own limit on a field is 1 GB).
const MAX_MESSAGE: usize = 1 << 30;
/// A newly confirmed position is sent at most this often, and an unchanged one this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Microseconds from the Unix epoch to Postgres' (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A replication connection (`replication=database`).
pub(crate) struct Replication {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// How much of `buf` has been handed out; dropped at the next read.
    read: usize,
    out: BytesMut,
    /// The position to confirm, the last sent, when, and whether the server asked for one.
    confirmed: Lsn,
    sent: Option<Lsn>,
    sent_at: Instant,
    reply: bool,
}

impl Replication {
    /// Connects to `endpoint` with the URL's TLS policy (the control connection's connector,
    /// so that both check a certificate the same way) and authenticates.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        tls: &Tls,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<Self, ReplicationError> {
        let mut tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match tls.mode() {
            SslMode::Disable => Box::new(tcp),
            mode => {
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                tcp.write_all(&request).await?;
                match tcp.read_u8().await? {
                    b'S' => {
                        let connect = MakeTlsConnect::<TcpStream>::make_tls_connect(
                            &mut tls.connector(),
                            &endpoint.host,
                        )
                        .unwrap_or_else(|never| match never {});
                        let stream = connect
                            .connect(tcp)
                            .await
                            .map_err(|e| ReplicationError::Tls(e.to_string()))?;
                        Box::new(stream)
                    }
                    b'N' if mode == SslMode::Prefer => Box::new(tcp),
                    b'N' => return Err(ReplicationError::NoTls(mode.as_str())),
                    other => {
                        return Err(ReplicationError::Protocol(format!(
                            "answer {other:#x} to the TLS request"
                        )))
                    }
                }
            }
        };
        let mut conn = Self {
            io,
            buf: BytesMut::with_capacity(BUFFER),
            read: 0,
            out: BytesMut::new(),
            confirmed: Lsn::default(),
            sent: None,
            sent_at: Instant::now(),
            reply: false,
        };
        frontend::startup_message(
            [
                ("user", user),
                ("database", database),
                ("replication", "database"),
                ("application_name", "nearcache-wal"),
            ],
            &mut conn.out,
        )?;
        conn.flush().await?;
        conn.authenticate(user, password).await?;
        conn.until_ready().await?;
        Ok(conn)
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), ReplicationError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let body = self.auth_request().await?;
            let (kind, data) = (
                i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                &body[4..],
            );
            match (kind, scram.as_mut()) {
                (0, _) => return Ok(()),
                (3, _) => frontend::password_message(password.as_bytes(), &mut self.out)?,
                (5, _) if data.len() >= 4 => {
                    let salt = [data[0], data[1], data[2], data[3]];
                    let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                }
                (10, _) => {
                    let offered: Vec<&[u8]> =
                        data.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !offered.contains(&SCRAM_SHA_256.as_bytes()) {
                        return Err(ReplicationError::Auth(format!(
                            "the server offers no SASL mechanism we speak: {}",
                            String::from_utf8_lossy(&offered.join(&b' '))
                        )));
                    }
                    // No channel binding: the TLS stream does not expose the certificate's
                    // hash. "n" (not "y") tells a server that offers it that we cannot.
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out)?;
                    scram = Some(s);
                }
                (11, Some(s)) => {
                    s.update(data)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                }
                (12, Some(s)) => {
                    s.finish(data)
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    continue;
                }
                (kind, _) => {
                    return Err(ReplicationError::Auth(format!(
                        "unsupported authentication request {kind}"
                    )))
                }
            }
            self.flush().await?;
        }
    }

    /// The next authentication request's body, at least its four-byte kind.
    async fn auth_request(&mut self) -> Result<BytesMut, ReplicationError> {
        match self.frame().await? {
            (b'R', body) if body.len() >= 4 => Ok(body),
            (b'E', body) => Err(ReplicationError::Server(ServerError::parse(&body))),
            (tag, _) => Err(ReplicationError::Protocol(format!(
                "{:?} during authentication",
                char::from(tag)
            ))),
        }
    }

    /// Reads up to ReadyForQuery; the first error the server sent on the way, if any.
    async fn until_ready(&mut self) -> Result<(), ReplicationError> {
        let mut error = None;
        loop {
            match self.frame().await? {
                (b'Z', _) => return error.map_or(Ok(()), |e| Err(ReplicationError::Server(e))),
                (b'E', body) => error = error.or(Some(ServerError::parse(&body))),
                _ => {}
            }
        }
    }

    /// Runs a replication command (`CREATE_REPLICATION_SLOT …`), ignoring what it returns.
    pub(crate) async fn command(&mut self, sql: &str) -> Result<(), ReplicationError> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        self.until_ready().await
    }

    /// Starts streaming `slot`'s changes of `publication` (pgoutput protocol 1, with logical
    /// messages: the heartbeat is one).
    pub(crate) async fn start(
        &mut self,
        slot: &str,
        publication: &str,
    ) -> Result<(), ReplicationError> {
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{}', messages 'true')",
            publication.replace('\'', "''")
        );
        frontend::query(&sql, &mut self.out)?;
        self.flush().await?;
        loop {
            match self.frame().await? {
                (b'W', _) => return Ok(()),
                (b'E', body) => return Err(ReplicationError::Server(ServerError::parse(&body))),
                _ => {}
            }
        }
    }

    /// Waits until a whole message is buffered (at once if one is: setup may have read past
    /// its last message) or more of the stream is read. Cancel-safe: a read that did not
    /// complete took nothing, so this can be one branch of a `select!`.
    pub(crate) async fn fill(&mut self) -> Result<(), ReplicationError> {
        if whole(&self.buf[self.read..])?.is_some() {
            return Ok(());
        }
        if self.read > 0 {
            self.buf.advance(self.read);
            self.read = 0;
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(BUFFER);
        }
        match self.io.read_buf(&mut self.buf).await? {
            0 => Err(ReplicationError::Closed),
            _ => Ok(()),
        }
    }

    /// The next whole message of the stream already read, if there is one.
    pub(crate) fn next(&mut self) -> Result<Option<Message<'_>>, ReplicationError> {
        loop {
            let Some((tag, end)) = whole(&self.buf[self.read..])? else {
                return Ok(None);
            };
            let (start, end) = (self.read + 5, self.read + end);
            self.read = end;
            match tag {
                b'd' => {}
                b'E' => {
                    let e = ServerError::parse(&self.buf[start..end]);
                    return Err(ReplicationError::Server(e));
                }
                b'c' => return Err(ReplicationError::Closed),
                // Notices and parameter changes.
                _ => continue,
            }
            let body = &self.buf[start..end];
            return match body.first() {
                Some(b'w') if body.len() >= 25 => Ok(Some(Message::XLogData(&body[25..]))),
                Some(b'k') if body.len() >= 18 => {
                    let wal_end = Lsn(u64::from_be_bytes(body[1..9].try_into().expect("8")));
                    self.reply |= body[17] != 0;
                    Ok(Some(Message::KeepAlive { wal_end }))
                }
                _ => Err(ReplicationError::Protocol(format!(
                    "unexpected copy data of {} bytes",
                    body.len()
                ))),
            };
        }
    }

    /// Lets the slot free the WAL before `lsn`; the server hears it with the next status.
    pub(crate) fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
    }

    /// When the next status update is due: now if the server asked for one, a second after
    /// the last if the confirmed position moved, ten seconds after it otherwise.
    pub(crate) fn status_due(&self) -> Instant {
        if self.reply {
            self.sent_at
        } else if self.sent != Some(self.confirmed) {
            self.sent_at + STATUS_INTERVAL
        } else {
            self.sent_at + IDLE_STATUS_INTERVAL
        }
    }

    /// Sends a status update: written, flushed and applied up to the confirmed position.
    pub(crate) async fn send_status(&mut self) -> Result<(), ReplicationError> {
        let lsn = self.confirmed.0.to_be_bytes();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut body = [0u8; 34];
        body[0] = b'r';
        for field in body[1..25].chunks_mut(8) {
            field.copy_from_slice(&lsn);
        }
        body[25..33].copy_from_slice(&(now - PG_EPOCH_MICROS).to_be_bytes());
        frontend::CopyData::new(&body[..])?.write(&mut self.out);
        self.flush().await?;
        self.sent = Some(self.confirmed);
        self.sent_at = Instant::now();
        self.reply = false;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        self.io.flush().await?;
        Ok(())
    }

    /// The next message during setup, whole: its tag and body.
    async fn frame(&mut self) -> Result<(u8, BytesMut), ReplicationError> {
        loop {
            if self.read == 0 {
                if let Some((tag, end)) = whole(&self.buf)? {
                    let mut body = self.buf.split_to(end);
                    body.advance(5);
                    return Ok((tag, body));
                }
            }
            self.fill().await?;
        }
    }
}

/// The tag and end of the first message of `buf`, if all of it is there.
fn whole(buf: &[u8]) -> Result<Option<(u8, usize)>, ReplicationError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header[1..5].try_into().expect("4")) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(ReplicationError::Protocol(format!(
            "a message of {len} bytes"
        )));
    }
    Ok((buf.len() > len).then_some((header[0], len + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_whole_only_once_all_its_bytes_are_read() {
        let mut m = vec![b'd'];
        m.extend(7u32.to_be_bytes());
        m.extend(b"abc");
        assert_eq!(whole(&m[..4]).unwrap(), None);
        assert_eq!(whole(&m[..7]).unwrap(), None);
        assert_eq!(whole(&m).unwrap(), Some((b'd', 8)));
        let mut bad = vec![b'd'];
        bad.extend(2u32.to_be_bytes());
        assert!(whole(&bad).is_err(), "a length below its own four bytes");
    }

    #[test]
    fn a_server_error_reads_as_postgres_wrote_it() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"x\" is active\0Dheld by 42\0\0";
        let e = ServerError::parse(body);
        assert_eq!(
            e.to_string(),
            "ERROR: replication slot \"x\" is active (SQLSTATE 55006): held by 42"
        );
        assert_eq!(
            ServerError::parse(b"").code,
            "",
            "an empty body is not a panic"
        );
        assert_eq!(ServerError::parse(b"Munterminated").message, "unterminated");
    }
}
