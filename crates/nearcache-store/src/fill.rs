//! What a loader returns: the value or its absence, with the tags it depends on.

use std::time::Duration;

use crate::Tag;

/// The result of a load: a value, or the fact that there is none (a negative entry), with the
/// [`Tag`]s it depends on and, optionally, a time to live of its own.
///
/// ```
/// use std::time::Duration;
/// use nearcache_store::{Fill, Tag};
///
/// let fill = Fill::found("ada")
///     .with_tag(Tag::row("users", 1))
///     .with_tag(Tag::row("organizations", 9))
///     .with_ttl(Duration::from_secs(60));
/// assert_eq!(fill.value(), Some(&"ada"));
/// assert_eq!(fill.tags().len(), 2);
///
/// let none: Fill<&str> = Fill::absent().with_tag(Tag::row("users", 2));
/// assert!(none.value().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill<V> {
    value: Option<V>,
    tags: Vec<Tag>,
    ttl: Option<Duration>,
}

impl<V> Fill<V> {
    /// A loaded value.
    pub fn found(value: V) -> Self {
        Self {
            value: Some(value),
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// No such row: cached as a negative entry, with the cache's negative TTL unless
    /// [`Fill::with_ttl`] says otherwise.
    pub fn absent() -> Self {
        Self {
            value: None,
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// From an `Option`: `Some` is [`Fill::found`], `None` is [`Fill::absent`].
    pub fn from_option(value: Option<V>) -> Self {
        Self {
            value,
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// Adds a tag the value depends on.
    #[must_use]
    pub fn with_tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds tags the value depends on.
    #[must_use]
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Self {
        self.tags.extend(tags);
        self
    }

    /// A time to live for this entry instead of the cache's default.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The value, or `None` for a negative entry.
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }

    /// The tags the value depends on.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The entry's own time to live, if the loader chose one.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The value, dropping the tags.
    pub fn into_value(self) -> Option<V> {
        self.value
    }

    /// Value, tags and TTL.
    pub fn into_parts(self) -> (Option<V>, Vec<Tag>, Option<Duration>) {
        (self.value, self.tags, self.ttl)
    }
}
