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

    /// The tag of one row: `table:key`, the key written as Postgres prints it (`key::text`),
    /// which is how every source reports a changed row (see [`RowKey`] for the types).
    ///
    /// ```
    /// use nearcache_store::Tag;
    /// assert_eq!(Tag::row("users", 42).as_str(), "users:42");
    /// assert_eq!(Tag::row("invoices", "INV-'7'").as_str(), "invoices:INV-'7'");
    /// ```
    pub fn row(table: &str, key: impl RowKey) -> Self {
        let mut name = String::with_capacity(table.len() + 1 + 36);
        name.push_str(table);
        name.push(':');
        key.write_key(&mut name);
        Self(Arc::from(name))
    }

    /// The tag's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A row key whose text is what Postgres prints for it (`key::text`, the text the triggers
/// send and the WAL decodes), so that the tag a loader puts on a value is the tag a change of
/// the row invalidates. Implemented for the key types whose Rust text is Postgres' text:
///
/// | Postgres | Rust |
/// |---|---|
/// | `smallint`, `integer`, `bigint` | `i16`, `i32`, `i64` (and the unsigned types) |
/// | `text`, `varchar` | `str`, `String`: the text itself, quotes and any Unicode included |
/// | `uuid` | `uuid::Uuid` (feature `uuid`): lowercase and hyphenated, whatever case it was parsed from |
///
/// Deliberately not for floating point or time types, whose Rust text differs from
/// Postgres'. For a `numeric` key use the text Postgres prints, scale included (`1.50`, not
/// `1.5`): read it as `key::text`, or keep the decimal type's own text if it preserves the
/// scale. A key type of your own implements this trait by writing that text.
pub trait RowKey {
    /// Appends the key's text to `out`.
    fn write_key(&self, out: &mut String);
}

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl RowKey for $t {
            fn write_key(&self, out: &mut String) {
                use fmt::Write;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

display_keys!(i8, i16, i32, i64, u8, u16, u32, u64);

impl RowKey for str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl RowKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

#[cfg(feature = "uuid")]
impl RowKey for uuid::Uuid {
    fn write_key(&self, out: &mut String) {
        out.push_str(
            self.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
    }
}

impl<T: RowKey + ?Sized> RowKey for &T {
    fn write_key(&self, out: &mut String) {
        (**self).write_key(out);
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
