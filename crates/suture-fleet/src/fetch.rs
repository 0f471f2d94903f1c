//! Fetching a repository: `tough`'s client (every TUF check: signatures and thresholds, the
//! root chain, expiry, version rollback against the trusted metadata kept in the state
//! directory, lengths and hashes of metadata and targets) over a small transport of ours:
//! `http://` and `https://` through `ureq` (bounded time and size; TLS by rustls with
//! aws-lc-rs, server certificates checked against the webpki roots), `file://` through
//! tough's own file transport.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tough::{
    ExpirationEnforcement, FilesystemTransport, Repository, RepositoryLoader, Transport,
    TransportError, TransportErrorKind, TransportStream,
};
use url::Url;

use crate::error::{Error, Result};

/// The most one HTTP response may carry (a bundle or a metadata file); tough also checks
/// every file against the length its signed metadata gives.
pub const MAX_FILE: u64 = 256 << 20;

/// How long one request may take, connection to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent's transport.
#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Http {
        // HTTPS through rustls with aws-lc-rs (the crypto tough already uses) and the
        // webpki roots.
        let tls = ureq::tls::TlsConfig::builder()
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build();
        Http {
            agent: config.into(),
        }
    }
}

impl Http {
    fn get(&self, url: &Url) -> std::result::Result<Vec<u8>, TransportError> {
        let err = |kind, e: ureq::Error| TransportError::new_with_cause(kind, url.as_str(), e);
        let mut resp = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| err(TransportErrorKind::Other, e))?;
        match resp.status().as_u16() {
            200 => {}
            404 | 410 => {
                return Err(TransportError::new(
                    TransportErrorKind::FileNotFound,
                    url.as_str(),
                ))
            }
            code => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.as_str(),
                    format!("HTTP status {code}"),
                ))
            }
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_FILE)
            .read_to_vec()
            .map_err(|e| err(TransportErrorKind::Other, e))
    }
}

#[async_trait]
impl Transport for Http {
    async fn fetch(&self, url: Url) -> std::result::Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                // Blocking is fine: the agent runs tough on a current-thread runtime of its own.
                let body = self.get(&url)?;
                let once: Vec<std::result::Result<Bytes, TransportError>> =
                    vec![Ok(Bytes::from(body))];
                Ok(Box::pin(futures::stream::iter(once)))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url.as_str(),
            )),
        }
    }
}

/// `base` + `sub/`, with `base` taken as a directory.
fn join(base: &Url, sub: &str) -> Result<Url> {
    let mut b = base.clone();
    if !b.path().ends_with('/') {
        let p = format!("{}/", b.path());
        b.set_path(&p);
    }
    b.join(sub)
        .map_err(|e| Error::with(format!("bad repository URL {base}"), e))
}

/// Parses the repository URL (`http://`, `https://`, `file://`, or a local path).
pub fn repo_url(s: &str) -> Result<Url> {
    match Url::parse(s) {
        Ok(u) => Ok(u),
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let p = std::path::absolute(s).map_err(|e| Error::io("resolve", Path::new(s), e))?;
            Url::from_directory_path(&p)
                .map_err(|()| Error::msg(format!("bad repository path {s}")))
        }
        Err(e) => Err(Error::with(format!("bad repository URL {s}"), e)),
    }
}

/// Loads and verifies the repository at `url` against the trusted root `trust`, with the
/// client's trusted metadata kept in `datastore` (which makes a replayed older version a
/// refused rollback across passes).
pub async fn load(url: &Url, trust: &[u8], datastore: &Path) -> Result<Repository> {
    std::fs::create_dir_all(datastore).map_err(|e| Error::io("create", datastore, e))?;
    RepositoryLoader::new(&trust, join(url, "metadata/")?, join(url, "targets/")?)
        .transport(Http::default())
        .datastore(datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| {
            Error::with(
                format!(
                    "the repository {url} could not be fetched and verified; nothing was applied"
                ),
                e,
            )
        })
}
