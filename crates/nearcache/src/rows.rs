//! The entries that carry one tag, as the fence's tag index holds them. Most tags name one
//! row, carried by one entry (a user's own tag), so one entry is held inline and a map is made
//! only for a tag that several entries carry (an organization's): a one-element map cost more
//! than a hundred bytes per cached entry.

use std::collections::hash_map;
use std::collections::HashMap;
use std::hash::Hash;

/// Key and entry id of each entry carrying a tag; never empty.
pub(crate) enum Rows<K> {
    One(K, u64),
    Many(HashMap<K, u64>),
}

impl<K: Hash + Eq> Rows<K> {
    /// Records entry `id` of `key`; returns the id it replaces, if the key was there.
    pub(crate) fn insert(&mut self, key: K, id: u64) -> Option<u64> {
        match self {
            Rows::One(k, i) if *k == key => Some(std::mem::replace(i, id)),
            Rows::One(..) => {
                let Rows::One(k, i) =
                    std::mem::replace(self, Rows::Many(HashMap::with_capacity(2)))
                else {
                    unreachable!("matched One above")
                };
                if let Rows::Many(map) = self {
                    map.insert(k, i);
                    map.insert(key, id);
                }
                None
            }
            Rows::Many(map) => map.insert(key, id),
        }
    }

    /// The entry id recorded for `key`.
    pub(crate) fn get(&self, key: &K) -> Option<u64> {
        match self {
            Rows::One(k, i) => (k == key).then_some(*i),
            Rows::Many(map) => map.get(key).copied(),
        }
    }

    /// Forgets `key`; returns whether no entry is left (the tag leaves the index then).
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        match self {
            Rows::One(k, _) => k == key,
            Rows::Many(map) => {
                map.remove(key);
                map.is_empty()
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::One(..) => 1,
            Rows::Many(map) => map.len(),
        }
    }

    /// The keys of the entries.
    pub(crate) fn into_keys(self) -> Keys<K> {
        match self {
            Rows::One(k, _) => Keys::One(Some(k)),
            Rows::Many(map) => Keys::Many(map.into_keys()),
        }
    }
}

/// See [`Rows::into_keys`].
pub(crate) enum Keys<K> {
    One(Option<K>),
    Many(hash_map::IntoKeys<K, u64>),
}

impl<K> Iterator for Keys<K> {
    type Item = K;

    fn next(&mut self) -> Option<K> {
        match self {
            Keys::One(k) => k.take(),
            Keys::Many(keys) => keys.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rows;

    #[test]
    fn one_entry_inline_then_a_map_and_back_to_empty() {
        let mut rows = Rows::One(1u32, 10);
        assert_eq!(rows.insert(1, 11), Some(10), "the same key: a newer entry");
        assert_eq!(
            (rows.len(), rows.get(&1), rows.get(&2)),
            (1, Some(11), None)
        );
        assert_eq!(rows.insert(2, 20), None);
        assert!(matches!(rows, Rows::Many(_)));
        assert_eq!(
            (rows.len(), rows.get(&1), rows.get(&2)),
            (2, Some(11), Some(20))
        );
        assert!(!rows.remove(&1));
        assert!(rows.remove(&2), "empty");
        let mut keys: Vec<u32> = Rows::One(3u32, 30).into_keys().collect();
        keys.extend(Rows::Many([(4, 40), (5, 50)].into()).into_keys());
        keys.sort_unstable();
        assert_eq!(keys, [3, 4, 5]);
    }
}
