//! Readers of the profile formats that do not share code with the agent's writers:
//! speedscope's file-format schema as rules, the Firefox Profiler's processed format
//! walked table by table, pprof through `go tool pprof` and `protoc --decode_raw`.
//! Each reader returns stacks as (thread, frames root first, weight).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One stack of a profile: thread name, frames from the root, and its weight.
pub type Stack = (String, Vec<String>, f64);

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what}: not an object"))
}

fn field<'a>(
    o: &'a serde_json::Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a Value, String> {
    o.get(key)
        .ok_or_else(|| format!("{what}: missing required {key:?}"))
}

fn string(v: &Value, what: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what}: not a string"))
}

fn number(v: &Value, what: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("{what}: not a number"))
}

fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array().ok_or_else(|| format!("{what}: not an array"))
}

const UNITS: [&str; 6] = [
    "bytes",
    "microseconds",
    "milliseconds",
    "nanoseconds",
    "none",
    "seconds",
];

/// Check a speedscope file against every rule of speedscope's file-format schema
/// (`FileFormat.File` and the definitions it refers to: required properties, types, enums)
/// and against what speedscope's importer further requires (frame indexes in range, as
/// many weights as samples); return its sampled stacks (profile name, frames root first,
/// weight).
pub fn check_speedscope(v: &Value) -> Result<Vec<Stack>, String> {
    let file = obj(v, "file")?;
    let schema = string(field(file, "$schema", "file")?, "$schema")?;
    if schema != "https://www.speedscope.app/file-format-schema.json" {
        return Err(format!("$schema {schema:?} is not speedscope's"));
    }
    if let Some(n) = file.get("name") {
        string(n, "name")?;
    }
    if let Some(n) = file.get("exporter") {
        string(n, "exporter")?;
    }
    let active = match file.get("activeProfileIndex") {
        Some(n) => Some(number(n, "activeProfileIndex")?),
        None => None,
    };
    let shared = obj(field(file, "shared", "file")?, "shared")?;
    let frames = array(field(shared, "frames", "shared")?, "shared.frames")?;
    let mut names = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let what = format!("frames[{i}]");
        let f = obj(f, &what)?;
        names.push(string(field(f, "name", &what)?, &what)?);
        if let Some(x) = f.get("file") {
            string(x, &what)?;
        }
        for k in ["line", "col"] {
            if let Some(x) = f.get(k) {
                number(x, &what)?;
            }
        }
    }
    let profiles = array(field(file, "profiles", "file")?, "profiles")?;
    if let Some(a) = active
        && (a < 0.0 || a as usize >= profiles.len().max(1))
    {
        return Err(format!("activeProfileIndex {a} out of range"));
    }
    let frame_at = |x: &Value, what: &str| -> Result<String, String> {
        let i = number(x, what)?;
        if i < 0.0 || i.fract() != 0.0 || i as usize >= names.len() {
            return Err(format!("{what}: frame index {i} out of range"));
        }
        Ok(names[i as usize].clone())
    };
    let mut stacks = Vec::new();
    for (pi, p) in profiles.iter().enumerate() {
        let what = format!("profiles[{pi}]");
        let p = obj(p, &what)?;
        let name = string(field(p, "name", &what)?, &what)?;
        let unit = string(field(p, "unit", &what)?, &what)?;
        if !UNITS.contains(&unit.as_str()) {
            return Err(format!("{what}: unit {unit:?} not in the enum"));
        }
        number(field(p, "startValue", &what)?, &what)?;
        number(field(p, "endValue", &what)?, &what)?;
        match string(field(p, "type", &what)?, &what)?.as_str() {
            "sampled" => {
                let samples = array(field(p, "samples", &what)?, &what)?;
                let weights = array(field(p, "weights", &what)?, &what)?;
                if samples.len() != weights.len() {
                    return Err(format!(
                        "{what}: {} samples but {} weights",
                        samples.len(),
                        weights.len()
                    ));
                }
                for (s, w) in samples.iter().zip(weights) {
                    let frames = array(s, &what)?
                        .iter()
                        .map(|x| frame_at(x, &what))
                        .collect::<Result<Vec<_>, _>>()?;
                    stacks.push((name.clone(), frames, number(w, &what)?));
                }
            }
            "evented" => {
                for e in array(field(p, "events", &what)?, &what)? {
                    let e = obj(e, &what)?;
                    let t = string(field(e, "type", &what)?, &what)?;
                    if t != "O" && t != "C" {
                        return Err(format!("{what}: event type {t:?}"));
                    }
                    frame_at(field(e, "frame", &what)?, &what)?;
                    number(field(e, "at", &what)?, &what)?;
                }
            }
            t => return Err(format!("{what}: type {t:?} is neither sampled nor evented")),
        }
    }
    Ok(stacks)
}

/// Read a gzipped Firefox Profiler processed profile: every sample of every thread as
/// (thread name, frames root first, weight), walking each thread's samples → stackTable
/// (prefix chain) → frameTable → funcTable → stringArray. Also returns the CPU time of
/// each thread's samples (`threadCPUDelta`, µs) and checks that times only go forward.
pub fn read_firefox(path: &Path) -> Result<(Value, Vec<Stack>), String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_reader(flate2::read::GzDecoder::new(f))
        .map_err(|e| format!("not gzipped JSON: {e}"))?;
    let meta = obj(field(obj(&v, "profile")?, "meta", "profile")?, "meta")?;
    number(field(meta, "version", "meta")?, "meta.version")?;
    number(field(meta, "interval", "meta")?, "meta.interval")?;
    let mut stacks = Vec::new();
    for (ti, t) in array(field(obj(&v, "profile")?, "threads", "profile")?, "threads")?
        .iter()
        .enumerate()
    {
        let what = format!("threads[{ti}]");
        let t = obj(t, &what)?;
        let name = string(field(t, "name", &what)?, &what)?;
        let strings: Vec<String> = array(field(t, "stringArray", &what)?, &what)?
            .iter()
            .map(|s| string(s, &what))
            .collect::<Result<_, _>>()?;
        let col = |table: &str, key: &str| -> Result<Vec<Value>, String> {
            let tb = obj(field(t, table, &what)?, table)?;
            Ok(array(field(tb, key, table)?, table)?.clone())
        };
        let func_name = col("funcTable", "name")?;
        let frame_func = col("frameTable", "func")?;
        let stack_frame = col("stackTable", "frame")?;
        let stack_prefix = col("stackTable", "prefix")?;
        let sample_stack = col("samples", "stack")?;
        let deltas = col("samples", "timeDeltas")?;
        let weights = obj(field(t, "samples", &what)?, "samples")?
            .get("weight")
            .and_then(Value::as_array)
            .cloned();
        if deltas.len() != sample_stack.len() {
            return Err(format!("{what}: timeDeltas and stack differ in length"));
        }
        for (i, s) in sample_stack.iter().enumerate() {
            if number(&deltas[i], "timeDeltas")? < 0.0 {
                return Err(format!("{what}: time goes back at sample {i}"));
            }
            let mut frames = Vec::new();
            let mut at = s.as_u64();
            while let Some(si) = at {
                let si = si as usize;
                let fr = stack_frame
                    .get(si)
                    .and_then(Value::as_u64)
                    .ok_or(format!("{what}: bad stack {si}"))?;
                let func = frame_func
                    .get(fr as usize)
                    .and_then(Value::as_u64)
                    .ok_or(format!("{what}: bad frame {fr}"))?;
                let name_idx = func_name
                    .get(func as usize)
                    .and_then(Value::as_u64)
                    .ok_or(format!("{what}: bad func {func}"))?;
                frames.push(
                    strings
                        .get(name_idx as usize)
                        .cloned()
                        .ok_or(format!("{what}: bad string {name_idx}"))?,
                );
                at = stack_prefix.get(si).and_then(Value::as_u64);
            }
            frames.reverse();
            let w = weights
                .as_ref()
                .and_then(|w| w.get(i))
                .and_then(Value::as_f64)
                .unwrap_or(1.0);
            stacks.push((name.clone(), frames, w));
        }
    }
    Ok((v, stacks))
}

/// A tool on the PATH, or None (the caller says it skips).
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `go tool pprof -raw FILE`, parsed: the sample types, and every sample as (values, leaf
/// first function names, labels). None when `go` is not installed.
pub fn go_pprof_raw(path: &Path) -> Option<Result<PprofRaw, String>> {
    let go = tool("go")?;
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(go)
        .args(["tool", "pprof", "-raw"])
        .arg(path)
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .env("GOCACHE", home.path().join("cache"))
        .output()
        .unwrap();
    if !o.status.success() {
        return Some(Err(format!(
            "go tool pprof failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Some(parse_pprof_raw(&String::from_utf8_lossy(&o.stdout)))
}

/// What `go tool pprof -raw` prints.
#[derive(Debug, Default)]
pub struct PprofRaw {
    /// `PeriodType: cpu nanoseconds`.
    pub period_type: String,
    /// Sample value names, `samples/count cpu/nanoseconds`.
    pub sample_types: Vec<String>,
    /// (values, location ids leaf first, label lines).
    pub samples: Vec<(Vec<i64>, Vec<u64>, Vec<String>)>,
    /// Location id → function names at it, innermost first.
    pub locations: std::collections::HashMap<u64, Vec<String>>,
}

impl PprofRaw {
    /// A sample's functions, leaf first (inlined ones included).
    pub fn functions(&self, locs: &[u64]) -> Vec<String> {
        locs.iter()
            .flat_map(|l| self.locations.get(l).cloned().unwrap_or_default())
            .collect()
    }
}

fn parse_pprof_raw(text: &str) -> Result<PprofRaw, String> {
    let mut raw = PprofRaw::default();
    let mut section = "";
    let mut last_loc = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("PeriodType: ") {
            raw.period_type = p.trim().to_string();
            continue;
        }
        match line.trim_end() {
            "Samples:" => {
                section = "types";
                continue;
            }
            "Locations" => {
                section = "locations";
                continue;
            }
            "Mappings" => {
                section = "mappings";
                continue;
            }
            _ => {}
        }
        match section {
            "types" => {
                raw.sample_types = line.split_whitespace().map(str::to_string).collect();
                section = "samples";
            }
            "samples" => {
                let t = line.trim();
                if t.is_empty() {
                    continue;
                }
                if let Some((vals, locs)) = t.split_once(':')
                    && vals.split_whitespace().all(|v| v.parse::<i64>().is_ok())
                    && !vals.trim().is_empty()
                {
                    let values = vals
                        .split_whitespace()
                        .map(|v| v.parse().unwrap())
                        .collect();
                    let locs = locs
                        .split_whitespace()
                        .map(|l| l.parse::<u64>().map_err(|e| format!("{l}: {e}")))
                        .collect::<Result<_, _>>()?;
                    raw.samples.push((values, locs, Vec::new()));
                } else if let Some(s) = raw.samples.last_mut() {
                    s.2.push(t.to_string());
                }
            }
            "locations" => {
                // `     1: 0x401136 M=1 busy_spin /path/file.c:50 s=0`, then inlined
                // callers on lines of their own: `             main /path/file.c:12 s=0`.
                let t = line.trim();
                if let Some((id, rest)) = t.split_once(": ")
                    && let Ok(id) = id.trim().parse::<u64>()
                {
                    let mut words = rest.split_whitespace();
                    let _addr = words.next();
                    let mut words: Vec<&str> = words.collect();
                    if words.first().is_some_and(|w| w.starts_with("M=")) {
                        words.remove(0);
                    }
                    let name = function_of(&words);
                    raw.locations.entry(id).or_default().extend(name);
                    last_loc = Some(id);
                } else if let Some(id) = last_loc {
                    let words: Vec<&str> = t.split_whitespace().collect();
                    let name = function_of(&words);
                    raw.locations.entry(id).or_default().extend(name);
                }
            }
            _ => {}
        }
    }
    if raw.sample_types.is_empty() {
        return Err(format!("no Samples section in:\n{text}"));
    }
    Ok(raw)
}

/// The function name in the words of a location line (`name file:line s=N`): everything
/// before the `file:line` word (names may hold spaces).
fn function_of(words: &[&str]) -> Option<String> {
    let end = words
        .iter()
        .position(|w| w.starts_with("s="))
        .unwrap_or(words.len());
    let mut w = &words[..end];
    if w.len() > 1 && w.last().is_some_and(|l| l.contains(':') || l.contains('/')) {
        w = &w[..w.len() - 1];
    }
    (!w.is_empty()).then(|| w.join(" "))
}

/// `protoc --decode_raw` of the gunzipped file: a protobuf parser that knows nothing of
/// the schema. Returns the strings of field 6 (the string table) in order, and how many
/// field-2 messages (samples) there are. None when protoc is not installed.
pub fn protoc_raw(path: &Path) -> Option<Result<(Vec<String>, usize), String>> {
    let protoc = tool("protoc")?;
    let mut bytes = Vec::new();
    use std::io::Read;
    if let Err(e) =
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut bytes)
    {
        return Some(Err(format!("not gzip: {e}")));
    }
    let mut child = Command::new(protoc)
        .arg("--decode_raw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let o = child.wait_with_output().unwrap();
    if !o.status.success() {
        return Some(Err(format!(
            "protoc --decode_raw failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let strings = text
        .lines()
        .filter_map(|l| l.strip_prefix("6: \""))
        .map(|s| s.trim_end_matches('"').to_string())
        .collect();
    let samples = text.lines().filter(|l| *l == "2 {").count();
    Some(Ok((strings, samples)))
}
