//! JWT verification.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use nearcache_pg::UserId;
use serde::Deserialize;

/// The key tokens are verified with.
#[derive(Clone)]
pub enum Key {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// A PEM public key: RSA (RS256) or Ed25519 (EdDSA).
    PublicPem(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Secret(_) => f.write_str("Secret(..)"),
            Key::PublicPem(_) => f.write_str("PublicPem(..)"),
        }
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The verification key.
    pub key: Key,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 30.
    pub leeway_secs: u64,
}

impl AuthConfig {
    /// Tokens signed with `key`, no issuer or audience checks, 30 s of leeway.
    pub fn new(key: Key) -> Self {
        Self {
            key,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

/// A configuration that cannot verify anything.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// An empty HS256 secret.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// A PEM that is neither an RSA nor an Ed25519 public key.
    #[error("the JWT public key is not an RSA or Ed25519 public key in PEM")]
    BadPublicKey,
}

/// Verifies bearer tokens and yields the user they name.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator {
    /// An authenticator for `config`.
    ///
    /// # Errors
    /// [`AuthConfigError`] when the key is unusable.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let (key, algorithm) = match &config.key {
            Key::Secret(s) if s.is_empty() => return Err(AuthConfigError::EmptySecret),
            Key::Secret(s) => (DecodingKey::from_secret(s), Algorithm::HS256),
            Key::PublicPem(pem) => match DecodingKey::from_rsa_pem(pem) {
                Ok(k) => (k, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ed_pem(pem).map_err(|_| AuthConfigError::BadPublicKey)?,
                    Algorithm::EdDSA,
                ),
            },
        };
        // Exactly one algorithm: a token that names another (HS256 signed with the public key,
        // `none`) is refused before its signature is looked at.
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &config.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    /// The user named by an `Authorization: Bearer <jwt>` header value.
    ///
    /// # Errors
    /// A reason, for the log only: clients get one 401 whatever it is.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<UserId, String> {
        let header = authorization.ok_or("no authorization header")?;
        let header = std::str::from_utf8(header).map_err(|_| "authorization is not text")?;
        let (scheme, token) = header
            .split_once(' ')
            .ok_or("authorization is not `Bearer <token>`")?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("authorization scheme is not Bearer".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &self.key, &self.validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        data.claims
            .sub
            .parse()
            .map_err(|_| "sub is not a user id".into())
    }
}
