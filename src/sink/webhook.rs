//! The HTTP webhook sink: each batch is one `POST` of a JSON array of records (the same
//! objects every sink writes), signed so the receiver can tell it came from roomcast.
//!
//! Headers: `Content-Type: application/json`, `X-Roomcast-Timestamp: <unix seconds>` and
//! `X-Roomcast-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`. The
//! receiver recomputes the HMAC over the raw body, compares in constant time and rejects stale
//! timestamps (replay protection). A 2xx answer means the batch is durable; 5xx, 408, 429 and
//! transport errors are retried (exponential backoff with jitter, the batch waiting in the spool
//! meanwhile); any other status is a refusal no retry can change, and the batch goes to the
//! spool's `rejected.jsonl`. A retried batch is signed again with a new timestamp but carries
//! the same records, with the same `id`s: receivers dedupe by `id`.
//!
//! Verify in Python:
//!
//! ```text
//! import hashlib, hmac, time
//! def verify(secret: bytes, body: bytes, ts: str, sig: str, tolerance_s=300) -> bool:
//!     mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return hmac.compare_digest("sha256=" + mac, sig) and abs(time.time() - int(ts)) <= tolerance_s
//! ```
//!
//! `ureq` is the client: small, blocking (the sink thread waits for the answer anyway),
//! rustls with the ring provider the server already uses, a keep-alive pool and a whole-request
//! timeout. HMAC comes from `ring` (already in the tree through rustls). Redirects are not
//! followed: a batch is never re-posted to a URL that was not configured.

use crate::sink::config::WebhookSinkConfig;
use crate::sink::record::EncodedRecord;
use crate::sink::{Sink, SinkFailure};
use std::fmt::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "X-Roomcast-Timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Roomcast-Signature";

/// The webhook sink's errors.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The receiver answered with a status that is not 2xx.
    #[error("webhook answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// Connecting, sending or reading failed (or timed out).
    #[error("webhook: {0}")]
    Transport(#[from] ureq::Error),
    /// The start check could not reach the receiver.
    #[error("webhook: cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` of `sink.webhook.url`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Whether a failed post may succeed later: transport errors, 5xx, 408 and 429 may; any other
/// status is the receiver refusing this batch.
pub fn is_retriable(error: &WebhookError) -> bool {
    match error {
        WebhookError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        WebhookError::Transport(ureq::Error::BadUri(_)) => false,
        WebhookError::Transport(_) | WebhookError::Connect { .. } => true,
    }
}

impl From<WebhookError> for SinkFailure {
    fn from(error: WebhookError) -> Self {
        Self::new(is_retriable(&error), error.to_string())
    }
}

/// Check a webhook URL: `http` or `https`, with a host. Returns `host:port`.
pub fn parse_url(url: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(format!("must be an http:// or https:// URL (got {url:?})")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("has no host (got {url:?})"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(default_port)))
}

/// `sha256=<hex>` over `timestamp + "." + body`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in tag.as_ref() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The body of a batch: a JSON array of the records' objects.
pub fn body(batch: &[&EncodedRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + batch.iter().map(|r| r.line.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, record) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(record.line.as_bytes());
    }
    out.push(b']');
    out
}

/// See the module doc.
pub struct WebhookSink {
    agent: ureq::Agent,
    config: WebhookSinkConfig,
    addr: String,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink").field("url", &self.config.url).finish_non_exhaustive()
    }
}

const ERROR_BODY_BYTES: u64 = 512;

impl WebhookSink {
    /// Build from a validated config.
    pub fn new(config: &WebhookSinkConfig) -> Result<Self, String> {
        let addr = parse_url(&config.url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            .build()
            .into();
        Ok(Self { agent, config: config.clone(), addr })
    }

    fn post(&mut self, body: &[u8]) -> Result<(), WebhookError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let timestamp = now.to_string();
        let sig = signature(self.config.secret.expose().as_bytes(), &timestamp, body);
        let mut response = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, &sig)
            .send(body)?;
        let status = response.status().as_u16();
        // Read the answer so the connection can be reused; keep a little for the error text.
        let text = response.body_mut().with_config().limit(ERROR_BODY_BYTES).read_to_string().unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(WebhookError::Status { status, body: text })
        }
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn health_check(&mut self) -> Result<(), SinkFailure> {
        if let Some(url) = self.config.health_url.clone() {
            let mut response = self.agent.get(&url).call().map_err(WebhookError::from)?;
            let status = response.status().as_u16();
            let body = response.body_mut().with_config().limit(ERROR_BODY_BYTES).read_to_string().unwrap_or_default();
            if !(200..300).contains(&status) {
                return Err(WebhookError::Status { status, body }.into());
            }
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let connect = |source| WebhookError::Connect { addr: self.addr.clone(), source };
        let addrs = self.addr.to_socket_addrs().map_err(connect)?;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(connect(last).into())
    }

    fn write_batch(&mut self, batch: &[&EncodedRecord]) -> Result<(), SinkFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        Ok(self.post(&body(batch))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::record::SinkRecord;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: hmac.new(b"Jefe", b"1700000000.[]", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"Jefe", "1700000000", b"[]"),
            "sha256=42718ec36cce5340b5a05af041e58b5572bc6b2fc8fda0030119319cba986520"
        );
        assert_ne!(signature(b"Jefe", "1700000001", b"[]"), signature(b"Jefe", "1700000000", b"[]"));
    }

    #[test]
    fn bodies_are_arrays_and_urls_are_checked() {
        let a = SinkRecord::Tombstone { room: "r".into(), id: "e-1".into(), seq: 1, ts_ms: 1 }.encode();
        let b = SinkRecord::Tombstone { room: "r".into(), id: "e-2".into(), seq: 2, ts_ms: 2 }.encode();
        let parsed: serde_json::Value = serde_json::from_slice(&body(&[&a, &b])).expect("json");
        assert_eq!(parsed.as_array().map(Vec::len), Some(2));
        assert_eq!(body(&[]), b"[]");
        assert_eq!(parse_url("http://127.0.0.1:9000/hook"), Ok("127.0.0.1:9000".to_owned()));
        assert_eq!(parse_url("https://example.com/hook"), Ok("example.com:443".to_owned()));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("").is_err());
        let status = |status| WebhookError::Status { status, body: String::new() };
        assert!(is_retriable(&status(503)) && is_retriable(&status(429)) && is_retriable(&status(408)));
        assert!(!is_retriable(&status(400)) && !is_retriable(&status(404)));
    }
}
