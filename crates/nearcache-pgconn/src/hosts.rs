//! Several hosts, as libpq takes them (`postgres://app@a:5432,b:5432/app`, `host=a,b
//! port=5432,5433`): tried in order, and the first that takes writes chosen, as libpq does with
//! `target_session_attrs=read-write`. The sources always ask for that (they must read the
//! primary's changes) and need to know which host it was (the WAL source's replication
//! connection goes to the same one).

use std::fmt;

use tokio_postgres::config::{Host, TargetSessionAttrs};

use crate::fence::{self, FormerPrimary, TIMELINE_SQL};
use crate::{Connected, PgUrl};

/// Why no host could be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// What tokio-postgres reported (the last host's, with several).
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The last host takes writes but is a former primary (split brain).
    #[error("{endpoint} is {fence}")]
    FormerPrimary {
        /// The host.
        endpoint: Endpoint,
        /// Its timeline against the newest seen.
        fence: FormerPrimary,
    },
}

/// One host of a URL, with its port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The host name or address, as the URL gives it (a certificate is checked against it).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl PgUrl {
    /// The URL's TCP hosts in order, each with its port: a port per host, one for all, or
    /// 5432 (libpq's rules). Unix sockets are left out.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .filter_map(|(i, host)| match host {
                Host::Tcp(host) => Some(Endpoint {
                    host: host.clone(),
                    port: match ports.len() {
                        0 => 5432,
                        1 => ports[0],
                        _ => ports.get(i).copied().unwrap_or(5432),
                    },
                }),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect()
    }

    /// These settings narrowed to `endpoint`: the same user, database, options, timeouts and
    /// TLS policy, one host.
    pub fn at(&self, endpoint: &Endpoint) -> PgUrl {
        let from = &self.config;
        let mut to = tokio_postgres::Config::new();
        if let Some(user) = from.get_user() {
            to.user(user);
        }
        if let Some(password) = from.get_password() {
            to.password(password);
        }
        if let Some(dbname) = from.get_dbname() {
            to.dbname(dbname);
        }
        if let Some(options) = from.get_options() {
            to.options(options);
        }
        if let Some(name) = from.get_application_name() {
            to.application_name(name);
        }
        if let Some(timeout) = from.get_connect_timeout() {
            to.connect_timeout(*timeout);
        }
        if let Some(timeout) = from.get_tcp_user_timeout() {
            to.tcp_user_timeout(*timeout);
        }
        to.ssl_mode(from.get_ssl_mode())
            .ssl_negotiation(from.get_ssl_negotiation())
            .keepalives(from.get_keepalives())
            .keepalives_idle(from.get_keepalives_idle())
            .target_session_attrs(from.get_target_session_attrs())
            .channel_binding(from.get_channel_binding())
            .host(&endpoint.host)
            .port(endpoint.port);
        if let Some(interval) = from.get_keepalives_interval() {
            to.keepalives_interval(interval);
        }
        if let Some(retries) = from.get_keepalives_retries() {
            to.keepalives_retries(retries);
        }
        PgUrl {
            config: to,
            tls: self.tls.clone(),
        }
    }

    /// The cluster and timeline of the server `config` reaches, on a connection of its own
    /// (`None` for a standby).
    async fn timeline(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Option<(String, i32)>, tokio_postgres::Error> {
        let (client, connection) = self.connect(config).await?;
        let driver = tokio::spawn(connection);
        let row = client.query_one(TIMELINE_SQL, &[]).await;
        drop(client);
        let _ = driver.await;
        let row = row?;
        Ok(row
            .get::<_, Option<String>>(0)
            .zip(row.get::<_, Option<i32>>(1)))
    }

    /// Connects to the first of the URL's TCP hosts, in order, that takes writes and is not a
    /// former primary (see [`crate::fence`]), with these settings changed by `configure`;
    /// returns which host it was (`None` for settings without a TCP host, a Unix socket, which
    /// tokio-postgres connects to as given).
    ///
    /// # Errors
    /// The last host's error when none can be used (a read-only server is refused, as libpq
    /// refuses it with `target_session_attrs=read-write`).
    pub async fn connect_primary(
        &self,
        configure: impl Fn(&mut tokio_postgres::Config),
    ) -> Result<(Connected, Option<Endpoint>), ConnectError> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            let mut config = self.config.clone();
            configure(&mut config);
            config.target_session_attrs(TargetSessionAttrs::ReadWrite);
            return Ok((self.connect(&config).await?, None));
        }
        let mut last = None;
        for endpoint in endpoints {
            let mut config = self.at(&endpoint).config.clone();
            configure(&mut config);
            config.target_session_attrs(TargetSessionAttrs::ReadWrite);
            // A first connection asks which timeline the server writes; only an admitted one
            // is connected to for the caller (whose connection nobody else may drive).
            match self.timeline(&config).await {
                // Became a standby between the two questions: try the next host.
                Ok(None) => continue,
                Ok(Some((system, timeline))) => {
                    if let Err(former) = fence::admit(&system, timeline) {
                        tracing::warn!(%endpoint, %former, "refusing a former primary");
                        last = Some(ConnectError::FormerPrimary {
                            endpoint,
                            fence: former,
                        });
                        continue;
                    }
                }
                Err(e) => {
                    last = Some(ConnectError::Postgres(e));
                    continue;
                }
            }
            match self.connect(&config).await {
                Ok(connected) => return Ok((connected, Some(endpoint))),
                Err(e) => last = Some(ConnectError::Postgres(e)),
            }
        }
        Err(last.expect("at least one host was tried"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_in_order_with_their_ports_as_libpq_reads_them() {
        let url = PgUrl::parse("postgres://app@a:5433,b,[::1]:5434/db?sslmode=disable").unwrap();
        let hosts: Vec<String> = url.endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["a:5433", "b:5432", "[::1]:5434"]);
        let url = PgUrl::parse("host=a,b port=6000,6001 user=app dbname=db").unwrap();
        let hosts: Vec<String> = url.endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["a:6000", "b:6001"]);
        let url = PgUrl::parse("host=a,b port=6000 user=app").unwrap();
        let hosts: Vec<String> = url.endpoints().iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["a:6000", "b:6000"]);
    }

    #[test]
    fn narrowed_to_one_host_it_keeps_the_rest() {
        let url = PgUrl::parse(
            "postgres://app:secret@a:1,b:2/db?application_name=api&connect_timeout=3&sslmode=require",
        )
        .unwrap();
        let b = url.at(&url.endpoints()[1]);
        let config = b.config();
        assert_eq!(config.get_hosts(), [Host::Tcp("b".into())]);
        assert_eq!(config.get_ports(), [2]);
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_password(), Some(&b"secret"[..]));
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(config.get_application_name(), Some("api"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(b.tls().mode(), crate::SslMode::Require);
    }
}
