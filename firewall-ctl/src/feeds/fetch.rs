//! Downloading a feed: HTTP(S) through the environment's proxy settings,
//! with timeouts, a size limit, bounded redirects and conditional requests;
//! or reading a local file. Nothing here decides whether a body is good.

use std::time::Duration;

use reqwest::{StatusCode, header};

use super::store::Validator;
use crate::config::{Feed, FeedSource};

/// Longest a connection may take to open (a whole download: the feed's
/// `timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body accepted: Azure's full service tags are about 4 MB.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// The server says the last good copy is still current (304).
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// How long the answer may be used: the lowest TTL of DNS records.
        valid_for: Option<Duration>,
    },
}

/// Why a fetch brought nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Http(String),
    #[error("reading `{path}`: {error}")]
    File { path: String, error: String },
    #[error("resolving `{name}`: {error}")]
    Dns { name: String, error: String },
}

/// The HTTP client all feeds share: proxies from `HTTPS_PROXY`,
/// `HTTP_PROXY` and `NO_PROXY`, the system's and the bundled CA roots.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("firewall-ctl/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Fetches `feed` (resolves it, for `dns`); `last` is what the last good
/// copy was validated with, for a conditional request.
pub async fn fetch(
    client: &reqwest::Client,
    feed: &Feed,
    last: Option<&Validator>,
) -> Result<Fetched, FetchError> {
    let fetching = async {
        match &feed.source {
            FeedSource::Url(url) => fetch_url(client, url, last).await,
            FeedSource::File(path) => read_file(path).await,
            FeedSource::Dns(names) => resolve(names).await,
        }
    };
    tokio::time::timeout(feed.timeout, fetching)
        .await
        .unwrap_or(Err(FetchError::Timeout(feed.timeout)))
}

/// A feed kept in a local file.
/// Read like the config: a FIFO or a device is refused at once, and no more
/// than [`MAX_BODY_BYTES`] is read.
async fn read_file(path: &std::path::Path) -> Result<Fetched, FetchError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        crate::fsutil::read_regular_bytes(&owned, MAX_BODY_BYTES as u64)
    })
    .await
    .map_err(|err| FetchError::File {
        path: path.display().to_string(),
        error: err.to_string(),
    })?;
    let bytes = read.map_err(|err| match err {
        crate::fsutil::ReadError::TooLarge { .. } => FetchError::TooLarge,
        err => FetchError::File {
            path: path.display().to_string(),
            error: err.to_string(),
        },
    })?;
    Ok(Fetched::Body {
        bytes,
        etag: None,
        last_modified: None,
        valid_for: None,
    })
}

/// The A and AAAA records of `names`, one address per line (read like a
/// `plain` list), and how long they may be used (their lowest TTL). Every
/// name must resolve: a partial answer would shrink the list for a
/// transient error. The servers are those of `/etc/resolv.conf`, read anew
/// each time, and nothing is cached between resolutions.
async fn resolve(names: &[String]) -> Result<Fetched, FetchError> {
    use hickory_resolver::{TokioResolver, config::LookupIpStrategy};
    let failed = |name: &str, error: String| FetchError::Dns {
        name: name.to_string(),
        error,
    };
    let mut builder = TokioResolver::builder_tokio()
        .map_err(|err| failed("(resolver)", format!("reading /etc/resolv.conf: {err}")))?;
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let resolver = builder.build();
    let mut lines = String::new();
    let mut valid_for: Option<Duration> = None;
    for name in names {
        let lookup = resolver
            .lookup_ip(name.as_str())
            .await
            .map_err(|err| failed(name, err.to_string()))?;
        for address in lookup.iter() {
            lines.push_str(&address.to_string());
            lines.push('\n');
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        valid_for = Some(valid_for.map_or(ttl, |shortest| shortest.min(ttl)));
    }
    Ok(Fetched::Body {
        bytes: lines.into_bytes(),
        etag: None,
        last_modified: None,
        valid_for,
    })
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    last: Option<&Validator>,
) -> Result<Fetched, FetchError> {
    let http = |err: reqwest::Error| FetchError::Http(describe(&err));
    let mut request = client.get(url);
    if let Some(last) = last {
        if let Some(etag) = &last.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(date) = &last.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, date);
        }
    }
    let mut response = request.send().await.map_err(http)?;
    match response.status() {
        StatusCode::NOT_MODIFIED if last.is_some() => return Ok(Fetched::NotModified),
        StatusCode::OK => {}
        status => return Err(FetchError::Status(status)),
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let header_text = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let etag = header_text(header::ETAG);
    let last_modified = header_text(header::LAST_MODIFIED);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(FetchError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body {
        bytes,
        etag,
        last_modified,
        valid_for: None,
    })
}

/// A reqwest error with its causes (connection refused, timed out, TLS).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed file that is a FIFO or a device is refused at once, not read
    /// forever (or until memory runs out).
    #[tokio::test]
    async fn a_feed_file_is_a_regular_file_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for path in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
            let err = read_file(path).await.unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let big = dir.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_BODY_BYTES as u64 + 1)
            .unwrap();
        assert!(matches!(read_file(&big).await, Err(FetchError::TooLarge)));
        let list = dir.path().join("list");
        std::fs::write(&list, "192.0.2.0/24\n").unwrap();
        let Ok(Fetched::Body { bytes, .. }) = read_file(&list).await else {
            panic!("a regular file is read");
        };
        assert_eq!(bytes, b"192.0.2.0/24\n");
    }
}
