//! The stub store: calls the loader every time and stores nothing.

use std::marker::PhantomData;

use async_trait::async_trait;

use crate::{LoadError, Loader, Mode, Store, Tag};

/// A [`Store`] that caches nothing: every `get_or_store` runs its loader. Use it in tests so
/// that each test sees the database, and to run a service with its cache off.
pub struct PassThrough<K, V> {
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> PassThrough<K, V> {
    /// The stub.
    pub fn new() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<K, V> Default for PassThrough<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> std::fmt::Debug for PassThrough<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassThrough")
    }
}

#[async_trait]
impl<K, V> Store<K, V> for PassThrough<K, V>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    async fn get_or_store(&self, _key: K, loader: Loader<V>) -> Result<Option<V>, LoadError> {
        loader.await.map(crate::Fill::into_value)
    }

    fn invalidate(&self, _key: &K) {}

    fn invalidate_tag(&self, _tag: &Tag) {}

    fn flush(&self) {}

    fn mode(&self) -> Mode {
        Mode::Bypass
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::Fill;

    #[tokio::test]
    async fn calls_the_loader_every_time() {
        let store = PassThrough::<u8, u8>::new();
        let calls = Arc::new(AtomicUsize::new(0));
        for round in 1..=3 {
            let c = calls.clone();
            let got = store
                .get_or_store(
                    1,
                    Box::pin(async move {
                        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(Fill::found(u8::try_from(n).unwrap()))
                    }),
                )
                .await
                .unwrap();
            assert_eq!(got, Some(round));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(store.mode(), Mode::Bypass);
    }

    #[tokio::test]
    async fn absent_and_errors_pass_through() {
        let store = PassThrough::<u8, u8>::new();
        let none = store
            .get_or_store(1, Box::pin(async { Ok(Fill::absent()) }))
            .await
            .unwrap();
        assert_eq!(none, None);
        let err = store
            .get_or_store(
                1,
                Box::pin(async { Err(LoadError::new(std::io::Error::other("boom"))) }),
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
}
