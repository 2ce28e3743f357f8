//! Postgres connection settings shared by nearcache's invalidation sources (the LISTEN
//! connection and the WAL source's control connection): a database URL read as libpq reads it,
//! `sslmode` and `sslrootcert` included, and a rustls connector that does what the mode says.
//!
//! tokio-postgres parses URLs itself but knows only `disable`, `prefer` and `require`, and
//! rejects `sslrootcert`; [`PgUrl::parse`] takes both out of the URL, hands the rest to
//! tokio-postgres and builds the TLS side with rustls (ring, like the rest of the workspace):
//!
//! | `sslmode`     | TLS                          | certificate checked                  |
//! |---------------|------------------------------|--------------------------------------|
//! | `disable`     | never                        | —                                    |
//! | `prefer` (default) | if the server offers it | no                                   |
//! | `require`     | always                       | no                                   |
//! | `verify-ca`   | always                       | chain, against the root certificates |
//! | `verify-full` | always                       | chain and host name                  |
//!
//! The root certificates are the PEM file named by `sslrootcert`, or, without it, the Mozilla
//! roots of `webpki-roots` (`sslrootcert=system` says the same). This is what the sqlx pool
//! (with its rustls feature) and the replication client of the WAL source do with the same URL,
//! so one URL means one policy on every connection an instance opens.
//!
//! ```
//! let url = nearcache_pgconn::PgUrl::parse(
//!     "postgres://app@db.internal:5432/app?sslmode=verify-full&application_name=api",
//! )
//! .unwrap();
//! assert_eq!(url.tls().mode(), nearcache_pgconn::SslMode::VerifyFull);
//! assert_eq!(url.config().get_dbname(), Some("app"));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

pub mod fence;
mod hosts;
mod verify;

pub use hosts::{ConnectError, Endpoint};

use verify::{ChainOnly, Unchecked};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate chain checked against the root certificates.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// The URL's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(UrlError::SslMode(other.to_string())),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database URL that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// tokio-postgres does not accept the rest of the URL.
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// An `sslmode` libpq does not know.
    #[error("invalid sslmode {0:?}: use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// The `sslrootcert` file cannot be read or holds no certificate.
    #[error("sslrootcert {path}: {detail}")]
    RootCert {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        detail: String,
    },
    /// rustls refuses the configuration.
    #[error("tls: {0}")]
    Tls(String),
    /// A `key=value` connection string that does not parse as libpq reads them.
    #[error("invalid connection string: {0}")]
    KeyValue(String),
}

/// How connections to the database use TLS: the mode, the root certificates, and a connector
/// for tokio-postgres built from them once.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    root_cert: Option<PathBuf>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A policy for `mode`, trusting the certificates of the PEM file `root_cert` (or the
    /// Mozilla roots without one).
    ///
    /// # Errors
    /// [`UrlError::RootCert`] when the file cannot be read or holds no certificate.
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<Self, UrlError> {
        let connector = MakeRustlsConnect::new(client_config(mode, root_cert.as_deref())?);
        Ok(Self {
            mode,
            root_cert,
            connector,
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The PEM file of trusted root certificates, if the URL named one.
    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// The connector to hand to [`tokio_postgres::Config::connect`].
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

/// A database URL as libpq reads it: tokio-postgres' settings and the TLS policy.
#[derive(Debug, Clone)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    tls: Tls,
}

/// What [`PgUrl::connect`] returns: a client and the connection task to drive.
pub type Connected = (
    Client,
    Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>,
);

impl PgUrl {
    /// Reads `url`, a `postgres://` URL or `key=value` pairs.
    ///
    /// # Errors
    /// [`UrlError`] when tokio-postgres refuses the URL, the `sslmode` is unknown, or the
    /// `sslrootcert` file cannot be used.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let TlsParams {
            rest,
            mode,
            root_cert,
        } = take_tls_params(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(UrlError::Url)?;
        let mode = mode.map(|m| m.parse()).transpose()?.unwrap_or_default();
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let root_cert = root_cert.filter(|p| p != "system").map(PathBuf::from);
        Ok(Self {
            config,
            tls: Tls::new(mode, root_cert)?,
        })
    }

    /// tokio-postgres' settings (without the TLS parameters it cannot read).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS policy.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// Connects with `config` (these settings, perhaps with more of the caller's) and this
    /// TLS policy.
    ///
    /// # Errors
    /// What tokio-postgres reports, a failed certificate check included.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Connected, tokio_postgres::Error> {
        config.connect(self.tls.connector()).await
    }
}

/// A URL's TLS parameters, taken out, and what is left of it for tokio-postgres.
struct TlsParams {
    /// The URL or key-value string without them.
    rest: String,
    /// `sslmode`, as given.
    mode: Option<String>,
    /// `sslrootcert`, as given.
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL or a key-value string.
fn take_tls_params(url: &str) -> Result<TlsParams, UrlError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root = Some(value);
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        let v = percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned();
                        !take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        key_values(url)?
            .into_iter()
            .filter_map(|(k, v)| (!take(&k, v.clone())).then(|| format!("{k}={}", quoted(&v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(TlsParams {
        rest,
        mode,
        root_cert: root,
    })
}

/// The pairs of a `key=value` connection string, read as libpq reads them: whitespace around
/// `=` allowed, a value in single quotes may hold spaces, and a backslash escapes the next
/// character (`\'`, `\\`).
fn key_values(text: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(UrlError::KeyValue(format!("{key:?} has no \"=\"")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(UrlError::KeyValue(format!(
                            "the value of {key:?} has no closing quote"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// A value written so that libpq (and tokio-postgres) read it back unchanged.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig, UrlError> {
    let roots = Arc::new(root_store(root_cert)?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| UrlError::Tls(e.to_string()))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| UrlError::Tls(e.to_string()))?;
    let config = match mode {
        SslMode::VerifyFull => builder.with_webpki_verifier(verifier),
        SslMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier))),
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider()))),
    };
    Ok(config.with_no_client_auth())
}

fn root_store(path: Option<&Path>) -> Result<RootCertStore, UrlError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = path else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let error = |detail: String| UrlError::RootCert {
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not PEM: {e}")))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(error("holds no certificate".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let url = PgUrl::parse(
            "postgres://u:p%40ss@h:6000/db?sslmode=verify-ca&application_name=x&sslrootcert=%2Fnone",
        );
        // The root certificate file does not exist: a clear error naming it.
        let err = url.unwrap_err().to_string();
        assert!(err.starts_with("sslrootcert /none: "), "{err}");

        let url = PgUrl::parse("postgres://u:p%40ss@h:6000/db?sslmode=require&application_name=x")
            .unwrap();
        assert_eq!(url.tls().mode(), SslMode::Require);
        assert_eq!(url.config().get_ssl_mode(), PgSslMode::Require);
        assert_eq!(url.config().get_application_name(), Some("x"));
        assert_eq!(url.config().get_password(), Some(&b"p@ss"[..]));

        let url = PgUrl::parse("host=h dbname=db sslmode=verify-full user=u").unwrap();
        assert_eq!(url.tls().mode(), SslMode::VerifyFull);
        assert_eq!(url.config().get_dbname(), Some("db"));

        // The forms libpq accepts: spaces around "=", quoted values with spaces and escapes.
        let url = PgUrl::parse(
            "host = h  dbname= 'my db' sslmode =verify-full user=u password='it\\'s \\\\ here' application_name=a\\ b",
        )
        .unwrap();
        assert_eq!(url.tls().mode(), SslMode::VerifyFull);
        assert_eq!(url.config().get_dbname(), Some("my db"));
        assert_eq!(url.config().get_user(), Some("u"));
        assert_eq!(url.config().get_password(), Some(&b"it's \\ here"[..]));
        assert_eq!(url.config().get_application_name(), Some("a b"));
        let url = PgUrl::parse("sslmode = 'require' host=h").unwrap();
        assert_eq!(url.tls().mode(), SslMode::Require);
        for bad in ["host", "host=h dbname='open"] {
            let err = PgUrl::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid connection string: "),
                "{bad}: {err}"
            );
        }

        let url = PgUrl::parse("postgres://u@h/db").unwrap();
        assert_eq!(url.tls().mode(), SslMode::Prefer, "libpq's default");
        assert_eq!(url.config().get_ssl_mode(), PgSslMode::Prefer);

        let url = PgUrl::parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(url.config().get_ssl_mode(), PgSslMode::Disable);

        let err = PgUrl::parse("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(
            err.to_string().contains("invalid sslmode \"verify\""),
            "{err}"
        );
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("nearcache-pgconn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = Tls::new(SslMode::VerifyFull, Some(empty.clone())).unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let tls = Tls::new(SslMode::VerifyFull, Some(good.clone())).unwrap();
        assert_eq!(tls.root_cert(), Some(good.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
