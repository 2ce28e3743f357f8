//! The tags an entry carries, held without an allocation of their own when there is at most
//! one (a principal carries one, its organization's): 32 bytes an entry that a slice of one
//! tag behind an `Arc` took.

use std::ops::Deref;
use std::sync::Arc;

use crate::Tag;

/// An entry's tags: none, one inline, or several behind one `Arc`. Derefs to the slice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Tags {
    #[default]
    None,
    One(Tag),
    Many(Arc<[Tag]>),
}

impl From<Vec<Tag>> for Tags {
    fn from(mut tags: Vec<Tag>) -> Self {
        match tags.len() {
            0 => Self::None,
            1 => Self::One(tags.pop().expect("one tag")),
            _ => Self::Many(tags.into()),
        }
    }
}

impl Deref for Tags {
    type Target = [Tag];

    fn deref(&self) -> &[Tag] {
        match self {
            Self::None => &[],
            Self::One(tag) => std::slice::from_ref(tag),
            Self::Many(tags) => tags,
        }
    }
}

impl Tags {
    /// Makes the `n`th tag `shared`, a copy of the same name held elsewhere (the fence's
    /// index), so that the name is held once.
    pub(crate) fn share(&mut self, n: usize, shared: &Tag) {
        match self {
            Self::None => {}
            Self::One(tag) => *tag = shared.clone(),
            // Copied once if another holder (a waiter's outcome) shares the slice.
            Self::Many(tags) => Arc::make_mut(tags)[n] = shared.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_one_tag_take_no_allocation_and_several_share_one() {
        let none = Tags::from(Vec::new());
        assert_eq!(none, Tags::None);
        assert!(none.is_empty());
        let one = Tags::from(vec![Tag::row("organizations", 7)]);
        assert!(matches!(one, Tags::One(_)));
        assert_eq!(&one[..], &[Tag::row("organizations", 7)]);
        let two = Tags::from(vec![Tag::row("users", 1), Tag::row("organizations", 7)]);
        assert!(matches!(two, Tags::Many(_)));
        assert_eq!(two.len(), 2);
        assert_eq!(two[1], Tag::row("organizations", 7));
    }

    #[test]
    fn sharing_a_tag_points_it_at_the_shared_name() {
        let shared = Tag::row("organizations", 7);
        for mut tags in [
            Tags::from(vec![Tag::row("organizations", 7)]),
            Tags::from(vec![Tag::row("users", 1), Tag::row("organizations", 7)]),
        ] {
            let n = tags.len() - 1;
            assert!(!std::ptr::eq(tags[n].as_str(), shared.as_str()));
            tags.share(n, &shared);
            assert!(std::ptr::eq(tags[n].as_str(), shared.as_str()), "{tags:?}");
            assert_eq!(tags[n], shared);
        }
    }
}
