//! JWT verification, remembering verified tokens.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::str::FromStr;

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

/// Verifies bearer tokens and yields the subject they name: the `sub` claim parsed as `S`, the
/// key of whatever your principals are (a UUID, a bigint, a text key).
///
/// A token whose signature checked out is remembered (the whole token, compared byte for
/// byte), so that the next request with it skips the signature and the JSON; its time claims
/// (`exp`, `nbf`) are checked again on every use.
pub struct Authenticator<S> {
    key: DecodingKey,
    validation: Validation,
    verified: Box<[Shard<S>]>,
    /// The wall clock, except in tests that move time.
    clock: Clock,
}

/// Verified tokens, by the whole token.
type Shard<S> = Mutex<HashMap<Box<str>, Verified<S>>>;

/// What a verified token says, for as long as it says it.
#[derive(Clone)]
struct Verified<S> {
    subject: S,
    exp: u64,
    nbf: Option<u64>,
}

/// Remembered tokens per shard; a full shard is emptied, which costs a few verifications.
const SHARD_CAPACITY: usize = 4096;
const SHARDS: usize = 16;

impl<S> std::fmt::Debug for Authenticator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    nbf: Option<u64>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The clock remembered tokens are checked against: seconds since the epoch.
type Clock = fn() -> u64;

/// Why a request was not authenticated. Clients get the same 401 whatever it is; this is for
/// the log, and for code that wants to count reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no authorization header")]
    MissingHeader,
    /// The header is not `Bearer <token>` in text.
    #[error("authorization is not `Bearer <token>`")]
    NotBearer,
    /// The token's `exp` has passed.
    #[error("invalid token: expired")]
    Expired,
    /// The token's `nbf` has not come yet.
    #[error("invalid token: not yet valid")]
    NotYetValid,
    /// The token does not verify: signature, algorithm, issuer, audience, shape.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `sub` does not parse as the subject type.
    #[error("sub is not a valid subject")]
    BadSubject,
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            _ => Self::Invalid(e.to_string()),
        }
    }
}

impl<S: FromStr + Clone> Authenticator<S> {
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
        Ok(Self {
            key,
            validation,
            verified: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            clock: now,
        })
    }

    /// The subject named by an `Authorization: Bearer <jwt>` header value.
    ///
    /// # Errors
    /// [`AuthError`], for the log only: clients get one 401 whatever it is.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<S, AuthError> {
        let header = authorization.ok_or(AuthError::MissingHeader)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        let token = token.trim();
        let shard = &self.verified[shard_of(token)];
        let remembered = shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some(v) = remembered {
            // The same time checks jsonwebtoken makes, with the same leeway.
            let (now, leeway) = ((self.clock)(), self.validation.leeway);
            if now.saturating_sub(leeway) >= v.exp {
                return Err(AuthError::Expired);
            }
            if v.nbf.is_some_and(|nbf| nbf > now + leeway) {
                return Err(AuthError::NotYetValid);
            }
            return Ok(v.subject);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let subject: S = data.claims.sub.parse().map_err(|_| AuthError::BadSubject)?;
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(
            token.into(),
            Verified {
                subject: subject.clone(),
                exp: data.claims.exp,
                nbf: data.claims.nbf,
            },
        );
        Ok(subject)
    }
}

impl<S> Authenticator<S> {
    /// How many verified tokens are remembered now: at most [`Authenticator::REMEMBERED_MAX`]
    /// (a full shard is emptied).
    pub fn remembered(&self) -> usize {
        self.verified
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The most verified tokens remembered at once.
    pub const REMEMBERED_MAX: usize = SHARDS * SHARD_CAPACITY;
}

fn shard_of(token: &str) -> usize {
    // The signature's last bytes are as good as random and cheap to read.
    let tail = token.as_bytes().iter().rev().take(4);
    tail.fold(0usize, |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % SHARDS
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    type UserId = uuid::Uuid;

    fn auth() -> Authenticator<UserId> {
        let mut config = AuthConfig::new(Key::Secret(b"s".to_vec()));
        config.leeway_secs = 0;
        Authenticator::new(&config).unwrap()
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let a = auth();
        let user = uuid::Uuid::new_v4();
        let t = token(json!({"sub": user.to_string(), "exp": now() + 2}), b"s");
        let header = format!("Bearer {t}");
        assert_eq!(a.verify(Some(header.as_bytes())), Ok(user));
        assert_eq!(a.verify(Some(header.as_bytes())), Ok(user), "from memory");
        // The clock passes exp: the memory must not outlive the token.
        fn after_exp() -> u64 {
            now() + 3
        }
        let a = Authenticator {
            clock: after_exp,
            ..a
        };
        assert_eq!(a.verify(Some(header.as_bytes())), Err(AuthError::Expired));
    }

    #[test]
    fn a_remembered_token_is_not_used_before_nbf_and_forgeries_are_checked() {
        let a = auth();
        let user = uuid::Uuid::new_v4();
        let early = token(
            json!({"sub": user.to_string(), "exp": now() + 600, "nbf": now() + 600}),
            b"s",
        );
        assert!(a
            .verify(Some(format!("Bearer {early}").as_bytes()))
            .is_err());
        let good = token(json!({"sub": user.to_string(), "exp": now() + 600}), b"s");
        assert!(a.verify(Some(format!("Bearer {good}").as_bytes())).is_ok());
        // Same claims, another key: a different string, so verified afresh, and refused.
        let forged = token(
            json!({"sub": user.to_string(), "exp": now() + 600}),
            b"other",
        );
        assert!(a
            .verify(Some(format!("Bearer {forged}").as_bytes()))
            .is_err());
    }

    const RSA: &[u8] = include_bytes!("../tests/keys/rsa.pem");
    const RSA_PUB: &[u8] = include_bytes!("../tests/keys/rsa.pub.pem");
    const ED: &[u8] = include_bytes!("../tests/keys/ed25519.pem");
    const ED_PUB: &[u8] = include_bytes!("../tests/keys/ed25519.pub.pem");

    #[test]
    fn public_keys_verify_rs256_and_eddsa_and_nothing_else() {
        let user = uuid::Uuid::new_v4();
        let claims = json!({"sub": user.to_string(), "exp": now() + 600});
        for (public, private, alg) in [
            (
                RSA_PUB,
                EncodingKey::from_rsa_pem(RSA).unwrap(),
                jsonwebtoken::Algorithm::RS256,
            ),
            (
                ED_PUB,
                EncodingKey::from_ed_pem(ED).unwrap(),
                jsonwebtoken::Algorithm::EdDSA,
            ),
        ] {
            let a = Authenticator::<UserId>::new(&AuthConfig::new(Key::PublicPem(public.to_vec())))
                .unwrap();
            let good = encode(&Header::new(alg), &claims, &private).unwrap();
            assert_eq!(
                a.verify(Some(format!("Bearer {good}").as_bytes())),
                Ok(user),
                "{alg:?}"
            );
            // Algorithm confusion: HS256 "signed" with the public key as the secret.
            let confused = token(claims.clone(), public);
            assert!(
                a.verify(Some(format!("Bearer {confused}").as_bytes()))
                    .is_err(),
                "{alg:?}"
            );
        }
        // The other key type's token is refused too.
        let rsa = Authenticator::<UserId>::new(&AuthConfig::new(Key::PublicPem(RSA_PUB.to_vec())))
            .unwrap();
        let ed_token = encode(
            &Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(ED).unwrap(),
        )
        .unwrap();
        assert!(rsa
            .verify(Some(format!("Bearer {ed_token}").as_bytes()))
            .is_err());
        assert!(
            Authenticator::<UserId>::new(&AuthConfig::new(Key::PublicPem(b"junk".to_vec())))
                .is_err()
        );
        assert!(Authenticator::<UserId>::new(&AuthConfig::new(Key::Secret(Vec::new()))).is_err());
    }
}
