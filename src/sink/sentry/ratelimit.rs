//! Sentry rate limits (`docs/sentry-format.md`, section "Responses, retries and rate
//! limits"): the `X-Sentry-Rate-Limits` and `Retry-After` headers and the per-category
//! "blocked until" state of one DSN.
//!
//! Grammar: `limit *( "," limit )`, `limit = retry_after ":" categories ":" scope [ ":" reason
//! [ ":" namespaces ] ] *( ":" ignored )`; `retry_after` integer or float seconds;
//! `categories` `;`-separated, empty = all categories. Unknown categories never match a
//! known one (so a limit naming only unknown categories blocks nothing); scopes, reasons and
//! extra fields are ignored; the longest expiry per category wins.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Categories that cover a non-UI `profile_chunk` item.
pub const PROFILE_CHUNK_CATEGORIES: &[&str] = &["profile_chunk", "profile_duration"];

/// Wait used on a 429 that says nothing about how long.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Longest limit honoured (a guard against absurd values): one day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// One parsed limit.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// How long it lasts from now.
    pub retry_after: Duration,
    /// Category names; empty means all categories.
    pub categories: Vec<String>,
}

fn parse_seconds(s: &str) -> Option<Duration> {
    let v: f64 = s.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(v).min(MAX_RETRY_AFTER))
}

/// Parse an `X-Sentry-Rate-Limits` value; malformed limits are skipped.
pub fn parse_rate_limits(header: &str) -> Vec<RateLimit> {
    header
        .split(',')
        .filter_map(|limit| {
            let mut parts = limit.trim().split(':');
            let retry_after = parse_seconds(parts.next()?)?;
            let categories = parts
                .next()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some(RateLimit {
                retry_after,
                categories,
            })
        })
        .collect()
}

/// Parse a `Retry-After` value given in seconds (integer or float). HTTP dates are not
/// supported (Sentry sends seconds) and give None.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_seconds(value)
}

/// Which categories are blocked and until when.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    all: Option<Instant>,
    categories: HashMap<String, Instant>,
}

fn extend(slot: &mut Option<Instant>, until: Instant) {
    if slot.is_none_or(|t| t < until) {
        *slot = Some(until);
    }
}

impl RateLimits {
    /// Nothing blocked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Block `categories` (empty = all) until `until` (a later existing limit is kept).
    pub fn block(&mut self, categories: &[String], until: Instant) {
        if categories.is_empty() {
            extend(&mut self.all, until);
        }
        for c in categories {
            let slot = self.categories.entry(c.clone()).or_insert(until);
            if *slot < until {
                *slot = until;
            }
        }
    }

    /// Apply one HTTP response: `X-Sentry-Rate-Limits` whatever the status; on 429 without
    /// it, `Retry-After` (or 60 s) for all categories.
    pub fn update_from_response(
        &mut self,
        status: u16,
        rate_limits: Option<&str>,
        retry_after: Option<&str>,
        now: Instant,
    ) {
        if let Some(h) = rate_limits.filter(|h| !h.trim().is_empty()) {
            for l in parse_rate_limits(h) {
                self.block(&l.categories, now + l.retry_after);
            }
        } else if status == 429 {
            let d = retry_after
                .and_then(parse_retry_after)
                .unwrap_or(DEFAULT_RETRY_AFTER);
            self.block(&[], now + d);
        }
    }

    /// When items of any of `categories` may be sent again; None when not blocked at `now`.
    pub fn blocked_until(&self, categories: &[&str], now: Instant) -> Option<Instant> {
        let mut latest = self.all.filter(|&t| t > now);
        for c in categories {
            if let Some(&t) = self.categories.get(*c)
                && t > now
            {
                extend(&mut latest, t);
            }
        }
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Option<Instant>, now: Instant) -> Option<f64> {
        d.map(|t| (t - now).as_secs_f64())
    }

    #[test]
    fn grammar() {
        let l = parse_rate_limits(
            "60:profile_chunk;profile_duration:organization:usage_exceeded, 2700::organization,\
             1.5:transaction:key:reason:ns1;ns2:extra:more,bogus:error:org, 10 : error ; ; span : project",
        );
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].retry_after, Duration::from_secs(60));
        assert_eq!(l[0].categories, ["profile_chunk", "profile_duration"]);
        assert_eq!(l[1].retry_after, Duration::from_secs(2700));
        assert!(l[1].categories.is_empty());
        assert_eq!(l[2].retry_after, Duration::from_millis(1500));
        assert_eq!(l[2].categories, ["transaction"]);
        assert_eq!(l[3].categories, ["error", "span"]);
        assert!(parse_rate_limits("").is_empty());
        assert!(parse_rate_limits("-5:error:org").is_empty());
        assert_eq!(parse_rate_limits("7").len(), 1, "categories missing = all");
    }

    #[test]
    fn blocking() {
        let now = Instant::now();
        let mut r = RateLimits::new();
        r.update_from_response(
            200,
            Some("30:transaction:org, 5:foo_unknown:org"),
            None,
            now,
        );
        assert_eq!(r.blocked_until(PROFILE_CHUNK_CATEGORIES, now), None);
        r.update_from_response(200, Some("20:profile_duration:org"), None, now);
        assert_eq!(
            secs(r.blocked_until(PROFILE_CHUNK_CATEGORIES, now), now),
            Some(20.0)
        );
        // Longest expiry kept.
        r.update_from_response(200, Some("10:profile_duration:org"), None, now);
        assert_eq!(
            secs(r.blocked_until(PROFILE_CHUNK_CATEGORIES, now), now),
            Some(20.0)
        );
        r.update_from_response(200, Some("40.5::org"), None, now);
        assert_eq!(
            secs(r.blocked_until(PROFILE_CHUNK_CATEGORIES, now), now),
            Some(40.5)
        );
        assert_eq!(secs(r.blocked_until(&["error"], now), now), Some(40.5));
        let later = now + Duration::from_secs(41);
        assert_eq!(r.blocked_until(PROFILE_CHUNK_CATEGORIES, later), None);
    }

    #[test]
    fn retry_after_on_429() {
        let now = Instant::now();
        let mut r = RateLimits::new();
        r.update_from_response(429, None, Some("30"), now);
        assert_eq!(
            secs(r.blocked_until(&["profile_chunk"], now), now),
            Some(30.0)
        );
        let mut r = RateLimits::new();
        r.update_from_response(429, None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), now);
        assert_eq!(
            secs(r.blocked_until(&["profile_chunk"], now), now),
            Some(60.0)
        );
        let mut r = RateLimits::new();
        r.update_from_response(429, None, None, now);
        assert_eq!(secs(r.blocked_until(&["x"], now), now), Some(60.0));
        // The specific header wins over Retry-After.
        let mut r = RateLimits::new();
        r.update_from_response(429, Some("5:profile_chunk:org"), Some("100"), now);
        assert_eq!(
            secs(r.blocked_until(&["profile_chunk"], now), now),
            Some(5.0)
        );
        assert_eq!(r.blocked_until(&["error"], now), None);
        // Retry-After on a non-429 is ignored.
        let mut r = RateLimits::new();
        r.update_from_response(503, None, Some("100"), now);
        assert_eq!(r.blocked_until(&["profile_chunk"], now), None);
        assert_eq!(parse_retry_after("2.25"), Some(Duration::from_millis(2250)));
    }
}
