//! The crate's one error type: a message that says what was refused or failed, and the
//! underlying cause (a TUF verification error, an I/O error), shown by the CLI as a chain.

use std::path::Path;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a repository command or an agent pass failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    message: String,
    #[source]
    cause: Option<Cause>,
}

impl Error {
    /// An error with no underlying cause.
    pub fn msg(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            cause: None,
        }
    }

    /// An error caused by `cause`. The cause's own chain is folded into one message, each
    /// source's text added only when the text so far does not already say it (tough's errors
    /// repeat their sources in their messages).
    pub fn with(message: impl Into<String>, cause: impl Into<Cause>) -> Error {
        let cause: Cause = cause.into();
        let mut text = cause.to_string();
        let mut next = cause.source();
        while let Some(c) = next {
            let m = c.to_string();
            if !text.contains(&m) {
                text.push_str(": ");
                text.push_str(&m);
            }
            next = c.source();
        }
        Error {
            message: message.into(),
            cause: Some(text.into()),
        }
    }

    /// An I/O error on `path`: "cannot <what> <path>".
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
        Error::with(format!("cannot {what} {}", path.display()), e)
    }

    /// The message and every cause, outermost first, joined by ": ".
    pub fn chain(&self) -> String {
        let mut s = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.cause.as_deref().map(|c| c as _);
        while let Some(c) = next {
            s.push_str(": ");
            s.push_str(&c.to_string());
            next = c.source();
        }
        s
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
