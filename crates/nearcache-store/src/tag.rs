//! Dependency tags: names of the rows a cached value was built from.

use std::fmt;
use std::sync::Arc;

/// A name of something a cached value depends on, conventionally `table:key` for a row.
///
/// A value loaded from the `users` row 42 joined with the `organizations` row 7 carries the tags
/// `users:42` and `organizations:7`; invalidating either evicts it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<str>);

impl Tag {
    /// A tag with this exact name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The tag of one row: `table:key`.
    ///
    /// ```
    /// assert_eq!(nearcache_store::Tag::row("users", 42).as_str(), "users:42");
    /// ```
    pub fn row(table: &str, key: impl fmt::Display) -> Self {
        Self(Arc::from(format!("{table}:{key}")))
    }

    /// The tag's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", &*self.0)
    }
}
