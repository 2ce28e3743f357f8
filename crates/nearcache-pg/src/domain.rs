//! Domain types. Identifiers are distinct types; profile changes are validated on construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            pub fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl nearcache_store::RowKey for $name {
            fn write_key(&self, out: &mut String) {
                self.0.write_key(out);
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// The key of a `users` row.
    UserId
);
id_type!(
    /// The key of an `organizations` row.
    OrgId
);

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Organization {
    /// Key.
    pub id: OrgId,
    /// Display name.
    pub name: String,
    /// Billing plan.
    pub plan: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When a column other than `updated_at` last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A user. `last_seen_at` is deliberately absent: it changes on every login and is not cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct User {
    /// Key.
    pub id: UserId,
    /// The organization the user belongs to.
    pub org_id: OrgId,
    /// Unique email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Inactive users cannot authenticate.
    pub active: bool,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When a cached column last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The authenticated party: a user with its organization, loaded in one query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// Its organization.
    pub organization: Organization,
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Its organization.
    pub org_id: OrgId,
    /// Unique email address.
    pub email: String,
    /// Display name.
    pub name: String,
}

/// Why a profile change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Nothing to change.
    #[error("nothing to update: give a name or an email")]
    Empty,
    /// The name is empty or too long.
    #[error("name must be 1 to {max} characters")]
    Name {
        /// The longest name allowed.
        max: usize,
    },
    /// The email does not look like one.
    #[error("email must look like name@domain and be at most {max} characters")]
    Email {
        /// The longest email allowed.
        max: usize,
    },
}

/// A validated change of a user's profile: a new name, a new email, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUpdate {
    name: Option<String>,
    email: Option<String>,
}

impl ProfileUpdate {
    /// The longest name accepted.
    pub const MAX_NAME: usize = 200;
    /// The longest email accepted.
    pub const MAX_EMAIL: usize = 254;

    /// Validates a change: names are trimmed and 1 to 200 characters; emails are trimmed,
    /// lowercased, at most 254 characters, with one `@` between non-empty parts and no spaces.
    ///
    /// # Errors
    /// [`ValidationError`] naming the first field that is wrong.
    pub fn new(name: Option<&str>, email: Option<&str>) -> Result<Self, ValidationError> {
        if name.is_none() && email.is_none() {
            return Err(ValidationError::Empty);
        }
        let name = name
            .map(|n| {
                let n = n.trim();
                let len = n.chars().count();
                if len == 0 || len > Self::MAX_NAME || n.chars().any(char::is_control) {
                    Err(ValidationError::Name {
                        max: Self::MAX_NAME,
                    })
                } else {
                    Ok(n.to_string())
                }
            })
            .transpose()?;
        let email = email
            .map(|e| {
                let e = e.trim().to_lowercase();
                let ok = e.len() <= Self::MAX_EMAIL
                    && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                    && matches!(e.split_once('@'), Some((local, domain))
                        if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
                if ok {
                    Ok(e)
                } else {
                    Err(ValidationError::Email {
                        max: Self::MAX_EMAIL,
                    })
                }
            })
            .transpose()?;
        Ok(Self { name, email })
    }

    /// The new name, if it changes.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The new email, if it changes.
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_updates_are_validated() {
        let u = ProfileUpdate::new(Some("  Ada "), Some(" Ada@Example.COM ")).unwrap();
        assert_eq!(
            (u.name(), u.email()),
            (Some("Ada"), Some("ada@example.com"))
        );
        assert_eq!(ProfileUpdate::new(None, None), Err(ValidationError::Empty));
        assert!(matches!(
            ProfileUpdate::new(Some(" "), None),
            Err(ValidationError::Name { .. })
        ));
        let long = "x".repeat(201);
        assert!(ProfileUpdate::new(Some(&long), None).is_err());
        for bad in ["", "a", "a@", "@b", "a b@c", "a@b@c"] {
            assert!(ProfileUpdate::new(None, Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_parse_and_print() {
        let id: UserId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert!("nope".parse::<UserId>().is_err());
    }
}
