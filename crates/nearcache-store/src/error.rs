//! The error a loader returns: cheap to clone, so one failed load reaches every waiting caller.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A loader's failure. It wraps the loader's own error, which [`LoadError::downcast_ref`] gets
/// back, and clones cheaply so that every caller waiting on one load receives it.
///
/// Any error converts into it, so `?` works in a loader: a `std::error::Error` (sqlx's, an
/// I/O error, your own), an `anyhow::Error`, a `Box<dyn Error>`, a `String`:
///
/// ```
/// use nearcache_store::{Fill, LoadError};
///
/// fn parse(text: &str) -> Result<Fill<u32>, LoadError> {
///     let n: u32 = text.parse()?; // std::num::ParseIntError
///     if n == 0 {
///         return Err("zero is not an id".into());
///     }
///     Ok(Fill::found(n))
/// }
/// assert_eq!(parse("7").unwrap().value(), Some(&7));
/// let e = parse("x").unwrap_err();
/// assert!(e.downcast_ref::<std::num::ParseIntError>().is_some());
/// assert_eq!(parse("0").unwrap_err().to_string(), "zero is not an id");
/// ```
///
/// Like `anyhow::Error`, and for the same reason (a blanket `From` for every error), it does
/// not itself implement `std::error::Error`. `?` still takes it out of a function returning
/// `Box<dyn Error>` or (with the feature `anyhow`) `anyhow::Result`; [`LoadError::error`]
/// lends the error, and [`LoadError::into_error`] makes one for your own error types.
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

    /// The loader's error.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// An error that implements `std::error::Error` (sharing the loader's): for `?` into
    /// `anyhow::Error`, a `Box<dyn Error>` or an error enum of yours.
    pub fn into_error(self) -> SharedError {
        SharedError(self.0)
    }
}

impl<E> From<E> for LoadError
where
    E: Into<Box<dyn Error + Send + Sync + 'static>>,
{
    fn from(error: E) -> Self {
        Self(Arc::from(error.into()))
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

impl From<LoadError> for Box<dyn Error + 'static> {
    fn from(error: LoadError) -> Self {
        Box::new(error.into_error())
    }
}

#[cfg(feature = "anyhow")]
impl From<LoadError> for anyhow::Error {
    fn from(error: LoadError) -> Self {
        anyhow::Error::new(error.into_error())
    }
}

/// A loader's error as a `std::error::Error`: see [`LoadError::into_error`].
#[derive(Clone)]
pub struct SharedError(Arc<dyn Error + Send + Sync + 'static>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for SharedError {
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

    #[test]
    fn question_mark_works_with_any_error_and_anyhow_both_ways() {
        fn io() -> Result<(), LoadError> {
            Err(std::io::Error::other("disk"))?;
            Ok(())
        }
        fn from_anyhow() -> Result<(), LoadError> {
            Err(anyhow::anyhow!("from anyhow"))?;
            Ok(())
        }
        fn into_anyhow() -> anyhow::Result<()> {
            Err(LoadError::new(Down))?;
            Ok(())
        }
        fn into_box() -> Result<(), Box<dyn Error>> {
            Err(LoadError::new(Down))?;
            Ok(())
        }
        assert_eq!(into_box().unwrap_err().to_string(), "database down");
        assert!(io().unwrap_err().downcast_ref::<std::io::Error>().is_some());
        assert_eq!(from_anyhow().unwrap_err().to_string(), "from anyhow");
        assert_eq!(into_anyhow().unwrap_err().to_string(), "database down");
        let direct: LoadError = Down.into();
        assert_eq!(direct.downcast_ref::<Down>(), Some(&Down));
    }
}
