//! The error a loader returns: cheap to clone, so one failed load reaches every waiting caller.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A loader's failure. It wraps the loader's own error, which [`LoadError::downcast_ref`] gets
/// back, and clones cheaply so that every caller waiting on one load receives it.
#[derive(Clone)]
pub struct LoadError(Arc<dyn Error + Send + Sync + 'static>);

impl LoadError {
    /// Wraps a loader's error.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The loader's error, if it is a `T`.
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for LoadError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Down;
    impl fmt::Display for Down {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("database down")
        }
    }
    impl Error for Down {}

    #[test]
    fn keeps_the_loaders_error() {
        let e = LoadError::new(Down);
        let copy = e.clone();
        assert_eq!(copy.to_string(), "database down");
        assert_eq!(copy.downcast_ref::<Down>(), Some(&Down));
        assert!(copy.downcast_ref::<std::io::Error>().is_none());
    }
}
