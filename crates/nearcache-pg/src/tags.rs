//! The tag convention of the reference service, in one place: the tables a principal is built
//! from, and the tags (`table:key`, the key as Postgres' `key::text`) that name its rows.
//! Loaders tag what they load with these, and handlers turn a change of a row into the same
//! tag, so both sides must agree; the routes, the server, the tests and the bench use these.

use nearcache_store::Tag;

use crate::{OrgId, Principal, UserId};

/// The `users` table.
pub const USERS: &str = "users";
/// The `organizations` table.
pub const ORGANIZATIONS: &str = "organizations";
/// The tables a principal is built from: what an invalidation source must watch.
pub const PRINCIPAL_TABLES: [&str; 2] = [USERS, ORGANIZATIONS];

impl UserId {
    /// The tag of this user's row. A UUID's text is its lowercase hyphenated form, as
    /// Postgres prints `id::text`, whatever case it was parsed from.
    pub fn tag(&self) -> Tag {
        Tag::row(USERS, self)
    }
}

impl OrgId {
    /// The tag of this organization's row.
    pub fn tag(&self) -> Tag {
        Tag::row(ORGANIZATIONS, self)
    }
}

impl Principal {
    /// The tags of the rows this principal was built from: its user and its organization.
    pub fn tags(&self) -> [Tag; 2] {
        [self.user.id.tag(), self.organization.id.tag()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_tag_is_the_table_and_the_uuid_as_postgres_prints_it() {
        let id: UserId = "7F0C4E4A-1B2D-4C3E-9F00-0123456789AB".parse().unwrap();
        assert_eq!(
            id.tag().as_str(),
            "users:7f0c4e4a-1b2d-4c3e-9f00-0123456789ab"
        );
    }
}
