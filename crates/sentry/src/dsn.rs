//! Sentry DSN parsing, the envelope endpoint URL and the `X-Sentry-Auth` header.
//!
//! Grammar: `{scheme}://{public_key}[:{secret}]@{host}[:{port}]{path_prefix}/{project_id}`
//! (`docs/sentry-format.md`, section "Endpoint and authentication").
//! The public key is a credential: [`Dsn`]'s `Display` and `Debug` show only its first four
//! characters followed by `…`, and [`Dsn::redact`] removes it (and the secret) from any text
//! before that text is reported.

use std::fmt;
use std::str::FromStr;

/// Why a DSN string was refused. The message never contains the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    /// No `://` after the scheme.
    #[error("invalid DSN: missing `scheme://` (expected https://KEY@HOST/PROJECT_ID)")]
    MissingScheme,
    /// Scheme other than http/https.
    #[error("invalid DSN: unsupported scheme `{0}` (only http and https)")]
    BadScheme(String),
    /// No `KEY@` part.
    #[error("invalid DSN: missing public key (expected https://KEY@HOST/PROJECT_ID)")]
    MissingKey,
    /// Empty host.
    #[error("invalid DSN: missing host")]
    MissingHost,
    /// Port not a number in 1..=65535.
    #[error("invalid DSN: bad port `{0}`")]
    BadPort(String),
    /// No project id as the last path segment.
    #[error("invalid DSN: missing project id (the last path segment, e.g. https://KEY@HOST/42)")]
    MissingProjectId,
    /// A character that cannot appear in that part of a DSN.
    #[error("invalid DSN: invalid character in {0}")]
    BadCharacter(&'static str),
}

/// A parsed Sentry DSN.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    scheme: String,
    public_key: String,
    secret_key: Option<String>,
    host: String,
    port: Option<u16>,
    path_prefix: String,
    project_id: String,
}

/// Show `key` as its first four characters and `…` (the whole key is never shown).
pub fn mask_key(key: &str) -> String {
    let head: String = key.chars().take(4).collect();
    format!("{head}…")
}

impl Dsn {
    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The public key (a credential: do not log it).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The deprecated secret key, when the DSN had one.
    pub fn secret_key(&self) -> Option<&str> {
        self.secret_key.as_deref()
    }

    /// Host name or address (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Explicit port, if the DSN had one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Path before the project id, without a trailing `/` (`""` or e.g. `"/sub"`).
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// The project id (last path segment), kept as a string.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// `{scheme}://{host}[:{port}]{path_prefix}/api/{project_id}/envelope/`.
    pub fn envelope_url(&self) -> String {
        format!(
            "{}://{}{}/api/{}/envelope/",
            self.scheme,
            self.authority(),
            self.path_prefix,
            self.project_id
        )
    }

    /// Where chunks sent with this DSN end up, without the key: `host[:port][/prefix]/project_id`
    /// (host in lower case). Two DSNs of one project (another key, http or https) share it.
    pub fn destination(&self) -> String {
        format!(
            "{}{}/{}",
            self.authority().to_ascii_lowercase(),
            self.path_prefix,
            self.project_id
        )
    }

    fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// The `X-Sentry-Auth` header value:
    /// `Sentry sentry_key=KEY, sentry_version=7, sentry_client=CLIENT[, sentry_secret=SECRET]`.
    pub fn auth_header(&self, client: &str) -> String {
        let mut s = format!(
            "Sentry sentry_key={}, sentry_version=7, sentry_client={client}",
            self.public_key
        );
        if let Some(secret) = &self.secret_key {
            s.push_str(", sentry_secret=");
            s.push_str(secret);
        }
        s
    }

    /// `text` with every occurrence of the public key and the secret replaced by a masked form.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.public_key, &mask_key(&self.public_key));
        if let Some(secret) = &self.secret_key {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

fn check_chars(s: &str, what: &'static str, extra_ok: &str) -> Result<(), DsnError> {
    let ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=".contains(c) || extra_ok.contains(c)
    });
    if ok {
        Ok(())
    } else {
        Err(DsnError::BadCharacter(what))
    }
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(input: &str) -> Result<Self, DsnError> {
        let s = input.trim();
        let (scheme, rest) = s.split_once("://").ok_or(DsnError::MissingScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            // The scheme cannot hold the key, so it is safe to show.
            let shown: String = scheme.chars().take(16).collect();
            return Err(DsnError::BadScheme(shown));
        }
        // Query and fragment are not part of a DSN; drop them.
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = authority.rsplit_once('@').ok_or(DsnError::MissingKey)?;
        let (public_key, secret_key) = match userinfo.split_once(':') {
            Some((k, s)) => (k, (!s.is_empty()).then(|| s.to_string())),
            None => (userinfo, None),
        };
        if public_key.is_empty() {
            return Err(DsnError::MissingKey);
        }
        check_chars(public_key, "the public key", "")?;
        if let Some(secret) = &secret_key {
            check_chars(secret, "the secret key", "")?;
        }

        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(DsnError::MissingHost);
        }

        let path = path.trim_end_matches('/');
        let (prefix, project) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        if project.is_empty() {
            return Err(DsnError::MissingProjectId);
        }
        check_chars(project, "the project id", "")?;
        check_chars(prefix, "the path", "/")?;
        Ok(Dsn {
            scheme,
            public_key: public_key.to_string(),
            secret_key,
            host: host.to_string(),
            port,
            path_prefix: prefix.to_string(),
            project_id: project.to_string(),
        })
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), DsnError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // IPv6 literal: `[addr]` or `[addr]:port`.
        let end = rest.find(']').ok_or(DsnError::BadCharacter("the host"))?;
        let host = &hostport[..end + 2];
        let after = &rest[end + 1..];
        if after.is_empty() {
            (host, None)
        } else {
            let p = after
                .strip_prefix(':')
                .ok_or(DsnError::BadCharacter("the host"))?;
            (host, Some(p))
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.starts_with('[') {
        check_chars(host, "the host", "")?;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                let shown: String = p.chars().take(8).collect();
                return Err(DsnError::BadPort(shown));
            }
        },
    };
    Ok((host, port))
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}@{}{}/{}",
            self.scheme,
            mask_key(&self.public_key),
            if self.secret_key.is_some() {
                ":***"
            } else {
                ""
            },
            self.authority(),
            self.path_prefix,
            self.project_id
        )
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsn")
            .field("scheme", &self.scheme)
            .field("public_key", &mask_key(&self.public_key))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path_prefix", &self.path_prefix)
            .field("project_id", &self.project_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn dsn(s: &str) -> Dsn {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_https() {
        let d = dsn(&format!("https://{KEY}@o1.ingest.us.sentry.io/42"));
        assert_eq!(d.scheme(), "https");
        assert_eq!(d.public_key(), KEY);
        assert_eq!(d.secret_key(), None);
        assert_eq!(d.host(), "o1.ingest.us.sentry.io");
        assert_eq!(d.port(), None);
        assert_eq!(d.path_prefix(), "");
        assert_eq!(d.project_id(), "42");
        assert_eq!(
            d.envelope_url(),
            "https://o1.ingest.us.sentry.io/api/42/envelope/"
        );
    }

    #[test]
    fn port_prefix_secret() {
        let d = dsn("http://k:s3cret@sentry.local:9000/sub/dir/7");
        assert_eq!(d.public_key(), "k");
        assert_eq!(d.secret_key(), Some("s3cret"));
        assert_eq!(d.port(), Some(9000));
        assert_eq!(d.path_prefix(), "/sub/dir");
        assert_eq!(d.project_id(), "7");
        assert_eq!(
            d.envelope_url(),
            "http://sentry.local:9000/sub/dir/api/7/envelope/"
        );
        assert_eq!(
            d.auth_header("profiler/0.1.0"),
            "Sentry sentry_key=k, sentry_version=7, sentry_client=profiler/0.1.0, sentry_secret=s3cret"
        );
        // The destination names the project, never the key or the secret.
        assert_eq!(d.destination(), "sentry.local:9000/sub/dir/7");
        let other_key = dsn("https://other@SENTRY.local:9000/sub/dir/7");
        assert_eq!(other_key.destination(), d.destination());
        assert_ne!(
            dsn("http://k@sentry.local:9000/sub/dir/8").destination(),
            d.destination()
        );
        assert_ne!(
            dsn("http://k@sentry.local/sub/dir/7").destination(),
            d.destination()
        );
    }

    #[test]
    fn ipv6_and_trailing_slash_and_uppercase_scheme() {
        let d = dsn("HTTP://key@[::1]:8080/5/");
        assert_eq!(d.scheme(), "http");
        assert_eq!(d.host(), "[::1]");
        assert_eq!(d.port(), Some(8080));
        assert_eq!(d.envelope_url(), "http://[::1]:8080/api/5/envelope/");
        let d = dsn("https://key@[fe80::1]/5");
        assert_eq!(d.port(), None);
        assert_eq!(d.envelope_url(), "https://[fe80::1]/api/5/envelope/");
    }

    #[test]
    fn auth_header_matches_python_shape() {
        let d = dsn("http://public@127.0.0.1:9/1");
        assert_eq!(
            d.auth_header("sentry.python/2.75.0"),
            "Sentry sentry_key=public, sentry_version=7, sentry_client=sentry.python/2.75.0"
        );
    }

    #[test]
    fn bad_dsns_have_clear_errors() {
        let cases: &[(&str, DsnError)] = &[
            ("o1.ingest.sentry.io/42", DsnError::MissingScheme),
            ("ftp://k@h/1", DsnError::BadScheme("ftp".into())),
            ("https://h/1", DsnError::MissingKey),
            ("https://@h/1", DsnError::MissingKey),
            ("https://k@/1", DsnError::MissingHost),
            ("https://k@h:99999/1", DsnError::BadPort("99999".into())),
            ("https://k@h:abc/1", DsnError::BadPort("abc".into())),
            ("https://k@h", DsnError::MissingProjectId),
            ("https://k@h/", DsnError::MissingProjectId),
            ("https://k@h o/1", DsnError::BadCharacter("the host")),
            ("https://k y@h/1", DsnError::BadCharacter("the public key")),
        ];
        for (s, want) in cases {
            let got = s.parse::<Dsn>().unwrap_err();
            assert_eq!(&got, want, "{s}");
            assert!(got.to_string().starts_with("invalid DSN: "), "{got}");
        }
    }

    #[test]
    fn errors_never_show_the_key() {
        for s in [
            format!("https://{KEY}@h:bad/1"),
            format!("https://{KEY}@h"),
            format!("gopher://{KEY}@h/1"),
            format!("https://{KEY}:{KEY}@/1"),
        ] {
            let e = s.parse::<Dsn>().unwrap_err().to_string();
            assert!(!e.contains(KEY), "{e}");
            assert!(!e.contains(&KEY[..8]), "{e}");
        }
    }

    #[test]
    fn display_and_debug_mask_the_key() {
        let d = dsn(&format!("https://{KEY}:topsecretvalue@host:443/p/42"));
        let shown = d.to_string();
        let dbg = format!("{d:?}");
        assert_eq!(shown, "https://0123…:***@host:443/p/42");
        for text in [&shown, &dbg] {
            assert!(!text.contains(KEY), "{text}");
            assert!(!text.contains("topsecretvalue"), "{text}");
        }
        assert!(dbg.contains("0123…"));
        let r = d.redact(&format!("failed with {KEY} and topsecretvalue"));
        assert_eq!(r, "failed with 0123… and ***");
    }
}
