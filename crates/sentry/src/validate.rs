//! A re-implementation of what Relay (26.9) does to a `profile_chunk` payload, used to check
//! the chunks this agent builds and by the test server. The step numbers in the comments
//! below are those of `docs/sentry-format.md`, section "Checks on arrival".
//!
//! Steps: route by `platform`/`version`; strict typed deserialization with Relay's field
//! types and aliases (`profiling_invalid_json`); item header platform must equal the payload
//! platform (`profiling_invalid_profile_type`); normalization: drop threads with at most one
//! non-empty sample, none left → `profiling_not_enough_samples`, a sample's stack out of range
//! → `profiling_malformed_samples`, a stack's frame out of range → `profiling_malformed_stacks`,
//! spread of timestamps > 66 s → `profiling_duration_is_too_long`; re-serialized size > 50 MiB →
//! `profiling_exceed_size_limit`. Errors are `"<discard reason>: <detail>"`.

use std::collections::{BTreeMap, HashMap};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Relay's `MAX_PROFILE_CHUNK_DURATION`, seconds.
pub const RELAY_MAX_CHUNK_DURATION_SECS: f64 = 66.0;
/// Relay's per-item size limit for profile chunks.
pub const RELAY_MAX_CHUNK_BYTES: usize = 50 * 1024 * 1024;

/// Relay's `Addr`: a string, `0x`-prefixed hex or decimal. Numbers are refused.
#[derive(Debug, Clone, Copy, Serialize)]
struct Addr(u64);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Addr, E> {
                let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => s.parse::<u64>(),
                };
                r.map(Addr)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_str(V)
    }
}

/// Relay's `EventId`: any UUID form the `uuid` crate parses.
#[derive(Debug, Clone, Serialize)]
struct EventId(String);

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        uuid::Uuid::parse_str(&s)
            .map(|u| EventId(u.simple().to_string()))
            .map_err(|_| de::Error::invalid_value(de::Unexpected::Str(&s), &"an event identifier"))
    }
}

/// Relay's `DebugId`: a UUID (hyphenated or 32 hex) with an optional hex appendix.
#[derive(Debug, Clone, Serialize)]
struct DebugId(String);

fn parse_debug_id(s: &str) -> bool {
    let is_hex = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit());
    let appendix_ok = |t: &str| t.is_empty() || (t.len() <= 8 && is_hex(t));
    if s.len() >= 36 && s.as_bytes()[8] == b'-' {
        let (uuid, rest) = s.split_at(36);
        uuid::Uuid::parse_str(uuid).is_ok()
            && (rest.is_empty() || rest.strip_prefix('-').is_some_and(appendix_ok))
    } else if s.len() >= 32 {
        let (uuid, rest) = s.split_at(32);
        is_hex(uuid) && appendix_ok(rest)
    } else {
        false
    }
}

impl<'de> Deserialize<'de> for DebugId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if parse_debug_id(&s) {
            Ok(DebugId(s))
        } else {
            Err(de::Error::invalid_value(
                de::Unexpected::Str(&s),
                &"a debug identifier",
            ))
        }
    }
}

/// A u64 given as a number or a numeric string.
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| de::Error::custom(format!("invalid number {n}"))),
        serde_json::Value::String(s) => s.parse().map_err(de::Error::custom),
        v => Err(de::Error::custom(format!("unsupported value: {v}"))),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ImageType {
    Macho,
    Symbolic,
    Sourcemap,
    Proguard,
    Jvm,
}

#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
struct Image {
    #[serde(alias = "name", default)]
    code_file: Option<String>,
    #[serde(alias = "id", default)]
    debug_id: Option<DebugId>,
    #[serde(rename = "type")]
    image_type: ImageType,
    #[serde(default)]
    image_addr: Option<Addr>,
    #[serde(default)]
    image_vmaddr: Option<Addr>,
    #[serde(default, deserialize_with = "number_or_string")]
    image_size: u64,
    #[serde(alias = "build_id", default)]
    uuid: Option<EventId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DebugMeta {
    images: Vec<Image>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientSdk {
    name: String,
    version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Unit {
    #[serde(alias = "ns")]
    Nanosecond,
    #[serde(alias = "hz")]
    Hertz,
    Byte,
    Percent,
    #[serde(alias = "nj")]
    Nanojoule,
}

#[derive(Debug, Serialize, Deserialize)]
struct MeasurementValue {
    timestamp: f64,
    value: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Measurement {
    unit: Unit,
    values: Vec<MeasurementValue>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abs_path: Option<String>,
    #[serde(alias = "column", default, skip_serializing_if = "Option::is_none")]
    colno: Option<u32>,
    #[serde(alias = "file", default, skip_serializing_if = "Option::is_none")]
    filename: Option<String>,
    #[serde(alias = "name", default, skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_app: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instruction_addr: Option<Addr>,
    #[serde(alias = "line", default, skip_serializing_if = "Option::is_none")]
    lineno: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ThreadMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sample {
    timestamp: f64,
    stack_id: usize,
    thread_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProfileData {
    samples: Vec<Sample>,
    stacks: Vec<Vec<usize>>,
    frames: Vec<Frame>,
    #[serde(default)]
    thread_metadata: BTreeMap<String, ThreadMetadata>,
}

#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
struct Chunk {
    #[serde(default)]
    measurements: BTreeMap<String, Measurement>,
    chunk_id: EventId,
    profiler_id: EventId,
    #[serde(default)]
    debug_meta: DebugMeta,
    #[serde(default)]
    environment: Option<String>,
    platform: String,
    #[serde(default)]
    release: Option<String>,
    client_sdk: ClientSdk,
    version: String,
    profile: ProfileData,
}

#[derive(Deserialize, PartialEq, Eq, Default)]
enum Version {
    #[default]
    Unknown,
    #[serde(rename = "1")]
    V1,
    #[serde(rename = "2")]
    V2,
}

#[derive(Deserialize)]
struct Minimal {
    platform: String,
    #[serde(default)]
    version: Version,
    #[serde(default)]
    sampled_profile: Option<de::IgnoredAny>,
}

fn invalid_json(e: impl std::fmt::Display) -> String {
    format!("profiling_invalid_json: {e}")
}

/// Check a chunk payload the way Relay parses and normalizes it. `Err` carries the Relay
/// discard reason first, e.g. `"profiling_duration_is_too_long: …"`.
pub fn validate(chunk_json: &serde_json::Value) -> Result<(), String> {
    validate_item(chunk_json, None)
}

/// [`validate`] plus the envelope item header check: when the item header has a
/// `platform`, it must equal the payload's.
pub fn validate_item(
    chunk_json: &serde_json::Value,
    item_platform: Option<&str>,
) -> Result<(), String> {
    let minimal = Minimal::deserialize(chunk_json).map_err(invalid_json)?;
    if minimal.platform == "android"
        && (minimal.version == Version::Unknown || minimal.sampled_profile.is_some())
    {
        return Err(
            "profiling_platform_not_supported: legacy Android chunks are not checked here".into(),
        );
    }
    if minimal.version != Version::V2 {
        return Err("profiling_platform_not_supported: version is not \"2\"".into());
    }
    let mut chunk = Chunk::deserialize(chunk_json).map_err(invalid_json)?;
    if let Some(p) = item_platform
        && p != chunk.platform
    {
        return Err(format!(
            "profiling_invalid_profile_type: item header platform {p:?} != payload platform {:?}",
            chunk.platform
        ));
    }
    let p = &mut chunk.profile;

    // Step 5: drop threads with <= 1 non-empty sample (a sample with a bad stack id does not
    // count).
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &p.samples {
        if p.stacks.get(s.stack_id).is_some_and(|st| !st.is_empty()) {
            *counts.entry(s.thread_id.as_str()).or_default() += 1;
        }
    }
    let keep: std::collections::HashSet<String> = counts
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(t, _)| t.to_string())
        .collect();
    p.samples.retain(|s| keep.contains(&s.thread_id));
    // Step 6: no sample left.
    if p.samples.is_empty() {
        return Err("profiling_not_enough_samples: no thread has two non-empty samples".into());
    }
    // Step 7: a sample's stack out of range.
    if let Some(s) = p.samples.iter().find(|s| s.stack_id >= p.stacks.len()) {
        return Err(format!(
            "profiling_malformed_samples: stack_id {} >= {} stacks",
            s.stack_id,
            p.stacks.len()
        ));
    }
    // Step 8: a stack's frame out of range, in any stack.
    for (i, st) in p.stacks.iter().enumerate() {
        if let Some(f) = st.iter().find(|&&f| f >= p.frames.len()) {
            return Err(format!(
                "profiling_malformed_stacks: stack {i} uses frame {f} >= {} frames",
                p.frames.len()
            ));
        }
    }
    // Step 9: sort by time, then the span.
    p.samples
        .sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
    let span = p.samples.last().map_or(0.0, |l| l.timestamp) - p.samples[0].timestamp;
    if span > RELAY_MAX_CHUNK_DURATION_SECS {
        return Err(format!(
            "profiling_duration_is_too_long: samples span {span:.3} s > 66 s"
        ));
    }
    // Step 10: thread_metadata of threads without samples.
    let used: std::collections::HashSet<&str> =
        p.samples.iter().map(|s| s.thread_id.as_str()).collect();
    let unused: Vec<String> = p
        .thread_metadata
        .keys()
        .filter(|k| !used.contains(k.as_str()))
        .cloned()
        .collect();
    for k in unused {
        p.thread_metadata.remove(&k);
    }
    // Step 11: the size of the re-serialized chunk.
    let size = serde_json::to_vec(&chunk).map_err(invalid_json)?.len();
    if size > RELAY_MAX_CHUNK_BYTES {
        return Err(format!("profiling_exceed_size_limit: {size} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_id_forms() {
        assert!(parse_debug_id("c7ae1c45-0971-44ec-61b4-b9baaa58833f"));
        assert!(parse_debug_id("C7AE1C45-0971-44EC-61B4-B9BAAA58833F"));
        assert!(parse_debug_id("c7ae1c45-0971-44ec-61b4-b9baaa58833f-1a"));
        assert!(parse_debug_id("c7ae1c45097144ec61b4b9baaa58833f"));
        assert!(parse_debug_id("451caec77109ec4461b4b9baaa58833f530dec65"));
        assert!(!parse_debug_id("451caec7"));
        assert!(!parse_debug_id("zzae1c45-0971-44ec-61b4-b9baaa58833f"));
        assert!(!parse_debug_id(
            "c7ae1c45097144ec61b4b9baaa58833f530dec65aa"
        ));
    }
}
