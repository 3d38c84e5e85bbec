//! One error type for the whole crate.
//!
//! Every variant carries the input that failed (a path, a line, a column, a parameter name) and, where
//! there is one, what the user can do about it. `Debug` prints like `Display`, so `?` in a notebook cell
//! or in `fn main() -> oml::Result<()>` reads well.

use std::path::PathBuf;

/// The result type of every fallible function in `oml`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `oml`, grouped by domain.
#[non_exhaustive]
#[derive(thiserror::Error)]
pub enum Error {
    // --- files and data ---
    /// A file or folder could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A CSV that cannot be read as a table at all (missing, empty, only a header, not a CSV).
    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },

    /// A CSV that was read but breaks the format: every problem, one per line.
    #[error("{path}: {} problem(s) in the dataframe:\n{}", problems.len(), problems.join("\n"))]
    InvalidData {
        path: PathBuf,
        problems: Vec<String>,
    },

    /// An image that cannot be opened or decoded.
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },

    /// A file in some other format (idx, npy, fonts) that is malformed.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    // --- parameters ---
    /// A parameter outside its allowed range.
    #[error("invalid {name} = {value}: {allowed}")]
    Param {
        name: &'static str,
        value: String,
        allowed: String,
    },

    /// A config value that is wrong, named by its key path (`optimizer.lr`, `sampler.n_labels`).
    #[error("at `{key}`: {message}")]
    Config { key: String, message: String },

    /// A name (preset, dataset, model) that is not known; lists the known ones.
    #[error("unknown {kind} '{name}'; known: {}", known.join(", "))]
    UnknownName {
        kind: &'static str,
        name: String,
        known: Vec<String>,
    },

    // --- compute ---
    /// An error from candle (tensors, devices).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// A device that this build or this machine does not have.
    #[error("device '{device}' is not available: {reason}")]
    Device { device: String, reason: String },

    /// Something else, with a message that says what.
    #[error("{0}")]
    Msg(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// An I/O error with the path and what was being done to it.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A config error at `key` (a dotted path such as `optimizer.lr`).
    pub fn config(key: impl Into<String>, message: impl ToString) -> Self {
        Error::Config {
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// This error as one found at `key`: a config error keeps its inner path below `key`.
    pub fn at(self, key: &str) -> Self {
        match self {
            Error::Config {
                key: inner,
                message,
            } if !key.is_empty() => Error::Config {
                key: format!("{key}.{inner}"),
                message,
            },
            Error::Config { .. } => self,
            other => Error::config(key, other),
        }
    }

    /// A parameter error: `name` is the parameter, `allowed` says what would be accepted.
    pub fn param(name: &'static str, value: impl ToString, allowed: impl Into<String>) -> Self {
        Error::Param {
            name,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}
