//! Sentry envelopes (`docs/sentry-format.md`, section "Envelope"): writing the one-chunk
//! envelope this agent sends, and a strict parser with Relay's framing rules (used by tests
//! and the test server).
//!
//! Layout written: `{"sent_at":"…","sdk":{"name":…,"version":…}}\n`
//! `{"type":"profile_chunk","platform":"rust","content_type":"application/json","length":N}\n`
//! then the N payload bytes and `\n`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::chunk::{SDK_NAME, SDK_VERSION};

#[derive(Serialize)]
struct Sdk<'a> {
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct EnvelopeHeader<'a> {
    sent_at: String,
    sdk: Sdk<'a>,
}

#[derive(Serialize)]
struct ItemHeader<'a> {
    #[serde(rename = "type")]
    item_type: &'a str,
    platform: &'a str,
    content_type: &'a str,
    length: usize,
}

/// `t` as RFC 3339 UTC with microseconds, e.g. `2025-11-21T11:20:00.020000Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let micros = d.subsec_micros();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The envelope carrying one `profile_chunk` payload (compact JSON without newlines).
pub fn envelope_bytes(payload: &[u8], platform: &str, sent_at: SystemTime) -> Vec<u8> {
    let header = EnvelopeHeader {
        sent_at: rfc3339_micros(sent_at),
        sdk: Sdk {
            name: SDK_NAME,
            version: SDK_VERSION,
        },
    };
    let item = ItemHeader {
        item_type: "profile_chunk",
        platform,
        content_type: "application/json",
        length: payload.len(),
    };
    let mut out = serde_json::to_vec(&header).expect("header serializes");
    out.push(b'\n');
    serde_json::to_writer(&mut out, &item).expect("item header serializes");
    out.push(b'\n');
    out.extend_from_slice(payload);
    out.push(b'\n');
    out
}

/// One item of a parsed envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeItem {
    /// The item header.
    pub header: serde_json::Value,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// A parsed envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The envelope header.
    pub header: serde_json::Value,
    /// The items in order.
    pub items: Vec<EnvelopeItem>,
}

/// Split off one header line: JSON up to the next `\n` (or the end).
fn header_line(data: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &data[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, data.len()),
    }
}

/// Parse envelope bytes with Relay's rules: header lines are single JSON objects ended by
/// `\n` or the end; with `length` exactly that many payload bytes follow, then `\n` or the
/// end; without `length` the payload runs to the next `\n`.
pub fn parse_envelope(data: &[u8]) -> Result<Envelope, String> {
    let (line, mut pos) = header_line(data, 0);
    let header: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("bad envelope header: {e}"))?;
    if !header.is_object() {
        return Err("envelope header is not an object".into());
    }
    let mut items = Vec::new();
    while pos < data.len() {
        let (line, next) = header_line(data, pos);
        if line.is_empty() && next >= data.len() {
            break; // trailing newline
        }
        let ih: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("bad item header: {e}"))?;
        if ih.get("type").and_then(|t| t.as_str()).is_none() {
            return Err("item header without a type".into());
        }
        pos = next;
        let payload = match ih.get("length") {
            Some(l) => {
                let n = l.as_u64().ok_or("item length is not an integer")? as usize;
                let end = pos
                    .checked_add(n)
                    .filter(|&e| e <= data.len())
                    .ok_or("item payload shorter than its length")?;
                let p = data[pos..end].to_vec();
                match data.get(end) {
                    None => pos = end,
                    Some(b'\n') => pos = end + 1,
                    Some(_) => return Err("missing newline after item payload".into()),
                }
                p
            }
            None => {
                let (p, next) = header_line(data, pos);
                pos = next;
                p.to_vec()
            }
        };
        items.push(EnvelopeItem {
            header: ih,
            payload,
        });
    }
    Ok(Envelope { header, items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_763_724_000_020_000);
        assert_eq!(rfc3339_micros(t), "2025-11-21T11:20:00.020000Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // Leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(rfc3339_micros(t), "2000-02-29T23:59:59.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(rfc3339_micros(t), "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn writes_three_lines_with_exact_length() {
        let payload = br#"{"version":"2","platform":"rust"}"#;
        let t = UNIX_EPOCH + Duration::from_micros(1_763_724_000_020_000);
        let env = envelope_bytes(payload, "rust", t);
        let text = std::str::from_utf8(&env).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            format!(
                r#"{{"sent_at":"2025-11-21T11:20:00.020000Z","sdk":{{"name":"{SDK_NAME}","version":"{SDK_VERSION}"}}}}"#
            )
        );
        assert_eq!(
            lines[1],
            format!(
                r#"{{"type":"profile_chunk","platform":"rust","content_type":"application/json","length":{}}}"#,
                payload.len()
            )
        );
        assert_eq!(lines[2].as_bytes(), payload);
        let parsed = parse_envelope(&env).unwrap();
        assert_eq!(parsed.items.len(), 1);
        assert_eq!(parsed.items[0].payload, payload);
    }

    #[test]
    fn parser_rules() {
        // No trailing newline, no length.
        let e = parse_envelope(b"{}\n{\"type\":\"x\"}\nabc").unwrap();
        assert_eq!(e.items[0].payload, b"abc");
        // Length that does not end at a newline.
        assert!(parse_envelope(b"{}\n{\"type\":\"x\",\"length\":2}\nabc\n").is_err());
        // Length beyond the end.
        assert!(parse_envelope(b"{}\n{\"type\":\"x\",\"length\":9}\nabc").is_err());
        // Payload with a newline inside, carried by length.
        let e = parse_envelope(b"{}\n{\"type\":\"x\",\"length\":3}\na\nb\n").unwrap();
        assert_eq!(e.items[0].payload, b"a\nb");
        assert!(parse_envelope(b"[]\n").is_err());
        assert!(parse_envelope(b"{}\n{\"length\":0}\n\n").is_err());
    }
}
