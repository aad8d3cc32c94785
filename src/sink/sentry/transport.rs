//! HTTP transport: one gzip-compressed envelope per POST to the DSN's envelope endpoint,
//! through `ureq` (rustls + webpki roots for https, plain TCP for http).

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;

use profiler_sentry::Dsn;

/// What came back from one POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The server answered.
    Http {
        /// Status code.
        status: u16,
        /// `X-Sentry-Rate-Limits`, when present.
        rate_limits: Option<String>,
        /// `Retry-After`, when present.
        retry_after: Option<String>,
        /// Start of the body (for error messages), at most 512 bytes, lossy UTF-8.
        body: String,
    },
    /// No answer: connection refused/reset, DNS, TLS, timeout. Worth retrying.
    Failed(String),
}

/// Sends envelopes to one DSN.
pub struct HttpTransport {
    agent: ureq::Agent,
    url: String,
    auth: String,
    user_agent: String,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("url", &self.url)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// gzip `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        Compression::default(),
    );
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

impl HttpTransport {
    /// A transport for `dsn`. `user_agent` is also the `sentry_client` of the auth header;
    /// `timeout` bounds each whole request (connect included).
    pub fn new(dsn: &Dsn, user_agent: &str, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .user_agent(user_agent)
            .build();
        HttpTransport {
            agent: ureq::Agent::new_with_config(config),
            url: dsn.envelope_url(),
            auth: dsn.auth_header(user_agent),
            user_agent: user_agent.to_string(),
        }
    }

    /// The endpoint URL (contains no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POST one envelope (uncompressed bytes; gzipped here).
    pub fn send(&self, envelope: &[u8]) -> Response {
        self.send_unless(envelope, &std::sync::atomic::AtomicBool::new(false))
            .expect("never cancelled")
    }

    /// [`HttpTransport::send`], unless `cancel` is set by the time the body is ready: then
    /// nothing is sent and None is returned.
    pub fn send_unless(
        &self,
        envelope: &[u8],
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Option<Response> {
        let body = gzip(envelope);
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let result = self
            .agent
            .post(&self.url)
            .header("X-Sentry-Auth", &self.auth)
            .header("Content-Type", "application/x-sentry-envelope")
            .header("Content-Encoding", "gzip")
            .header("User-Agent", &self.user_agent)
            .send(&body[..]);
        match result {
            Ok(mut resp) => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let rate_limits = header("X-Sentry-Rate-Limits");
                let retry_after = header("Retry-After");
                let status = resp.status().as_u16();
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec()
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                Some(Response::Http {
                    status,
                    rate_limits,
                    retry_after,
                    body,
                })
            }
            Err(e) => Some(Response::Failed(e.to_string())),
        }
    }
}
