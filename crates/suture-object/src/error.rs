//! Errors of the object layer. Messages are short, sentence-case, and name what was wrong.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a relocatable object: this is {0}")]
    NotRelocatable(String),
    #[error("malformed object: {0}")]
    Malformed(String),
    #[error("unsupported object: {0}")]
    Unsupported(String),
    #[error("objects do not match: {0}")]
    Mismatch(String),
    #[error("cannot write patch object: {0}")]
    Write(String),
}

impl Error {
    pub(crate) fn malformed(e: object::read::Error) -> Self {
        Error::Malformed(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
