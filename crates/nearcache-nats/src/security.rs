//! Reaching a secured NATS: the credentials and TLS settings NATS clients take, shared by the
//! relay and the instances (each binary takes them as flags with the `cli` feature, one
//! declaration for both). User and password may also come in the URL
//! (`nats://user:password@host:4222`); `tls://` in the URL requires TLS.

use std::path::PathBuf;

/// Credentials and TLS for the NATS connection. All optional: without any, the connection is
/// as the URL says.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct NatsSecurity {
    /// A credentials file: a user JWT and its nkey seed, as `nsc` writes it.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-creds", env = "NATS_CREDS", value_name = "FILE")
    )]
    pub credentials: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`), for a server that knows the user by its public key.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-nkey", env = "NATS_NKEY", value_name = "FILE")
    )]
    pub nkey_seed: Option<PathBuf>,
    /// A token.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)
    )]
    pub token: Option<String>,
    /// A user name (with `--nats-password`).
    #[cfg_attr(feature = "cli", arg(long = "nats-user", env = "NATS_USER"))]
    pub user: Option<String>,
    /// The user's password.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)
    )]
    pub password: Option<String>,
    /// PEM file of the authorities that sign the server's certificate; TLS is then required.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-tls-ca", env = "NATS_TLS_CA", value_name = "FILE")
    )]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of a client certificate, for a server that asks for one (mutual TLS).
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-tls-cert", env = "NATS_TLS_CERT", value_name = "FILE")
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-tls-key", env = "NATS_TLS_KEY", value_name = "FILE")
    )]
    pub tls_key: Option<PathBuf>,
    /// TLS before anything else, for a server configured with `handshake_first`.
    #[cfg_attr(feature = "cli", arg(long = "nats-tls-first", env = "NATS_TLS_FIRST"))]
    pub tls_first: bool,
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file named by the settings cannot be read.
    #[error("reading {what} {path}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why not.
        #[source]
        cause: std::io::Error,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs its key: give both --nats-tls-cert and --nats-tls-key")]
    HalfCertificate,
    /// A password without a user, or a user without a password.
    #[error("a NATS user needs its password: give both --nats-user and --nats-password")]
    HalfUser,
}

impl NatsSecurity {
    /// Checks what can be checked without reading files: pairs given whole.
    ///
    /// # Errors
    /// [`SecurityError::HalfCertificate`], [`SecurityError::HalfUser`].
    pub fn validate(&self) -> Result<(), SecurityError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(SecurityError::HalfCertificate);
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(SecurityError::HalfUser);
        }
        Ok(())
    }

    /// async-nats' options with these settings (files read now).
    ///
    /// # Errors
    /// [`SecurityError`] when a file cannot be read or a pair is given half.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions, SecurityError> {
        self.validate()?;
        // async-nats builds its TLS settings on the process' default rustls provider, which
        // rustls cannot choose when more than one is compiled in (the dependency tree has
        // both): ring, as the rest of nearcache uses, unless the process chose one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &self.credentials {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|cause| SecurityError::Read {
                        what: "the NATS credentials file",
                        path: path.clone(),
                        cause,
                    })?;
        }
        if let Some(path) = &self.nkey_seed {
            let seed =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|cause| SecurityError::Read {
                        what: "the NATS nkey seed file",
                        path: path.clone(),
                        cause,
                    })?;
            options = options.nkey(seed.trim().to_string());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if self.tls_first {
            options = options.tls_first();
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_and_unreadable_files_are_refused_with_what_to_give() {
        let half = NatsSecurity {
            tls_cert: Some("client.pem".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(
            half.options().await,
            Err(SecurityError::HalfCertificate)
        ));
        let half = NatsSecurity {
            user: Some("relay".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(half.options().await, Err(SecurityError::HalfUser)));
        let missing = NatsSecurity {
            credentials: Some("/nonexistent/relay.creds".into()),
            ..NatsSecurity::default()
        };
        let e = missing.options().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading the NATS credentials file /nonexistent/relay.creds"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause kept");
        assert!(NatsSecurity::default().options().await.is_ok());
    }
}
