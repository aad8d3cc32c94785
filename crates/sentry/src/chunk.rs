//! Sample format v2 chunks: the serde model of a `profile_chunk` payload and the
//! [`ChunkBuilder`] that turns unwound, symbolized samples into one chunk per window.
//!
//! Every chunk the builder emits passes `validate::validate` (feature `validate`): threads
//! with fewer than two non-empty samples are dropped (no chunk at all when none is left), all
//! indexes are in bounds, the spread of sample timestamps is at most [`MAX_CHUNK_SPAN_SECS`]
//! (the builder refuses a sample that would stretch it further), and every field has the
//! type Relay wants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::envelope;
use super::inapp::InAppRules;

/// Platform of every chunk: the one Sentry symbolicates as native code (see
/// `docs/sentry-format.md`, section "Chunk payload").
pub const PLATFORM: &str = "rust";
/// `client_sdk.name`, the `sentry_client` of the auth header and the User-Agent product.
pub const SDK_NAME: &str = "profiler";
/// `client_sdk.version`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest spread (seconds) between the first and last sample of a chunk. Relay rejects
/// more than 66 s; one second of margin.
pub const MAX_CHUNK_SPAN_SECS: f64 = 65.0;

/// A new random id as 32 lowercase hex digits (uuid v4), as used for `profiler_id` and
/// `chunk_id`.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new `profiler_id` for one attach session (32 lowercase hex digits).
pub fn new_profiler_id() -> String {
    new_id()
}

/// Per-session facts copied into every chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    /// One per attach session, 32 lowercase hex digits ([`new_profiler_id`]).
    pub profiler_id: String,
    /// `release` of the profiled application, if known.
    pub release: Option<String>,
    /// `environment`, if known.
    pub environment: Option<String>,
}

/// One frame of an unwound, symbolized stack, leaf first. Inlined frames of one address come
/// as several `ResolvedFrame`s with the same `instruction_addr`, innermost first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResolvedFrame {
    /// Native code, or a Python function (then `instruction_addr` is unused, `file` is the
    /// absolute `co_filename` and `module` the dotted module name).
    pub platform: FramePlatform,
    /// Absolute runtime address: the PC for the leaf, the raw return address for callers.
    pub instruction_addr: u64,
    /// Function name, demangled.
    pub function: Option<Arc<str>>,
    /// Source file.
    pub file: Option<Arc<str>>,
    /// Source line.
    pub line: Option<u32>,
    /// Path of the module (executable or shared object) the address is in.
    pub module: Option<Arc<str>>,
}

/// What kind of code a frame is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FramePlatform {
    /// Machine code (C, C++, Rust, the interpreter itself).
    #[default]
    Native,
    /// A Python function run by CPython.
    Python,
}

/// The chunk platform of a chunk holding Python frames (native frames in it are named by the
/// agent, each with `"platform": "native"`).
pub const PYTHON_PLATFORM: &str = "python";

/// A module mapped in the target, for `debug_meta.images`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Absolute path as in `/proc/PID/maps`.
    pub code_file: String,
    /// Sentry debug_id (hyphenated UUID), see [`super::debug_id`].
    pub debug_id: String,
    /// Full build-id as lowercase hex, when there is one.
    pub code_id: Option<String>,
    /// Lowest start address of the file's mappings.
    pub image_addr: u64,
    /// End of the last mapping minus `image_addr`.
    pub image_size: u64,
    /// `p_vaddr` of the first `PT_LOAD` (0 for PIE and shared objects).
    pub image_vmaddr: u64,
}

impl ImageInfo {
    /// Build from the bytes of the ELF file and where it is mapped. None when the bytes are
    /// not a 64-bit ELF with a build-id or a `.text` section.
    pub fn from_elf(
        code_file: &str,
        elf_data: &[u8],
        image_addr: u64,
        image_size: u64,
    ) -> Option<Self> {
        let ids = super::debug_id::elf_ids(elf_data)?;
        Some(ImageInfo {
            code_file: code_file.to_string(),
            debug_id: ids.debug_id,
            code_id: ids.code_id,
            image_addr,
            image_size,
            image_vmaddr: ids.first_vaddr,
        })
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.image_addr && addr - self.image_addr < self.image_size
    }
}

/// `client_sdk` of a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSdk {
    /// SDK name.
    pub name: String,
    /// SDK version (semver).
    pub version: String,
}

/// One `debug_meta.images[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugImage {
    /// Always `symbolic`.
    #[serde(rename = "type")]
    pub image_type: String,
    /// Path of the module.
    pub code_file: String,
    /// Hyphenated UUID.
    pub debug_id: String,
    /// Build-id hex (dropped by Relay, kept for humans).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code_id: Option<String>,
    /// CPU architecture (dropped by Relay).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub arch: Option<String>,
    /// `"0x…"`.
    pub image_addr: String,
    /// Bytes.
    pub image_size: u64,
    /// `"0x…"`.
    pub image_vmaddr: String,
}

/// `debug_meta`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugMeta {
    /// The images.
    pub images: Vec<DebugImage>,
}

/// One frame of `profile.frames`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// `"0x…"`; native frames only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instruction_addr: Option<String>,
    /// Demangled function name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub function: Option<String>,
    /// Source file as the debug info names it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filename: Option<String>,
    /// Source file when absolute.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub abs_path: Option<String>,
    /// Source line.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lineno: Option<u32>,
    /// Module path (native frames).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub package: Option<String>,
    /// Dotted module name (Python frames).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
    /// `"python"` or `"native"`, in chunks of platform `python` only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<String>,
    /// Always set.
    pub in_app: bool,
}

/// One `profile.samples[]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix seconds, microsecond precision.
    pub timestamp: f64,
    /// Kernel TID as a decimal string.
    pub thread_id: String,
    /// Index into `stacks`.
    pub stack_id: usize,
}

/// `thread_metadata` value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMeta {
    /// Thread name (`/proc/PID/task/TID/comm`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

/// `profile`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileData {
    /// Samples sorted by timestamp.
    pub samples: Vec<Sample>,
    /// Stacks, leaf first, as indexes into `frames`.
    pub stacks: Vec<Vec<usize>>,
    /// Unique frames.
    pub frames: Vec<Frame>,
    /// Names of the threads that have samples.
    pub thread_metadata: BTreeMap<String, ThreadMeta>,
}

/// A `profile_chunk` payload (Sample format v2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileChunk {
    /// `"2"`.
    pub version: String,
    /// [`PLATFORM`].
    pub platform: String,
    /// Session id, 32 hex.
    pub profiler_id: String,
    /// Chunk id, 32 hex.
    pub chunk_id: String,
    /// This agent.
    pub client_sdk: ClientSdk,
    /// Application release.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub release: Option<String>,
    /// Application environment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub environment: Option<String>,
    /// Images of the modules that appear in stacks.
    pub debug_meta: DebugMeta,
    /// Samples, stacks, frames, threads.
    pub profile: ProfileData,
}

impl ProfileChunk {
    /// The chunk id.
    pub fn chunk_id(&self) -> &str {
        &self.chunk_id
    }

    /// Number of samples (idle ones included).
    pub fn sample_count(&self) -> usize {
        self.profile.samples.len()
    }

    /// Seconds between the first and the last sample.
    pub fn span_seconds(&self) -> f64 {
        let ts = self.profile.samples.iter().map(|s| s.timestamp);
        let min = ts.clone().fold(f64::INFINITY, f64::min);
        let max = ts.fold(f64::NEG_INFINITY, f64::max);
        if min.is_finite() { max - min } else { 0.0 }
    }

    /// The payload as compact JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("chunk serializes")
    }

    /// The exact envelope bytes (before compression) carrying this chunk, with `sent_at`.
    pub fn to_envelope(&self, sent_at: SystemTime) -> Vec<u8> {
        envelope::envelope_bytes(&self.to_json(), &self.platform, sent_at)
    }
}

/// Why [`ChunkBuilder::add_sample`] refused a sample.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// Adding it would make the chunk span more than [`MAX_CHUNK_SPAN_SECS`]: finish this
    /// builder and add the sample to a new one.
    #[error("sample at {0} s would make the chunk span more than 65 s")]
    SpanExceeded(f64),
    /// Timestamp not a finite positive number.
    #[error("bad sample timestamp {0}")]
    BadTimestamp(f64),
}

struct RawSample {
    timestamp: f64,
    tid: i32,
    stack: u32,
    non_empty: bool,
}

/// Collects samples of one window and builds a [`ProfileChunk`].
pub struct ChunkBuilder {
    meta: ChunkMeta,
    rules: InAppRules,
    frames: Vec<Frame>,
    frame_addrs: Vec<u64>,
    frame_index: HashMap<ResolvedFrame, u32>,
    stacks: Vec<Vec<u32>>,
    stack_index: HashMap<Vec<u32>, u32>,
    samples: Vec<RawSample>,
    thread_names: HashMap<i32, String>,
    images: Vec<ImageInfo>,
    min_ts: f64,
    max_ts: f64,
    scratch: Vec<u32>,
    /// A Python frame was added: the chunk's platform is `python`.
    has_python: bool,
}

/// Round Unix seconds to microseconds.
fn round_micros(t: f64) -> f64 {
    (t * 1e6).round() / 1e6
}

impl ChunkBuilder {
    /// A builder for one window of the session described by `meta`.
    pub fn new(meta: &ChunkMeta, in_app: &InAppRules) -> Self {
        ChunkBuilder {
            meta: meta.clone(),
            rules: in_app.clone(),
            frames: Vec::new(),
            frame_addrs: Vec::new(),
            frame_index: HashMap::new(),
            stacks: Vec::new(),
            stack_index: HashMap::new(),
            samples: Vec::new(),
            thread_names: HashMap::new(),
            images: Vec::new(),
            min_ts: f64::INFINITY,
            max_ts: f64::NEG_INFINITY,
            scratch: Vec::new(),
            has_python: false,
        }
    }

    /// Register a mapped module. Only images that contain an address of some emitted frame
    /// end up in the chunk. Deduplicated by `code_file` + `image_addr`.
    pub fn add_image(&mut self, img: ImageInfo) {
        if !self
            .images
            .iter()
            .any(|i| i.code_file == img.code_file && i.image_addr == img.image_addr)
        {
            self.images.push(img);
        }
    }

    fn intern_frame(&mut self, f: &ResolvedFrame) -> u32 {
        if let Some(&i) = self.frame_index.get(f) {
            return i;
        }
        let function = f.function.as_deref().map(str::to_string);
        let frame = if f.platform == FramePlatform::Python {
            self.has_python = true;
            let abs = f.file.as_deref().map(str::to_string);
            let module = f.module.as_deref().map(str::to_string);
            let in_app =
                self.rules
                    .is_in_app_python(module.as_deref(), function.as_deref(), abs.as_deref());
            Frame {
                instruction_addr: None,
                filename: abs
                    .as_deref()
                    .map(|p| crate::python::short_filename(p).to_string()),
                abs_path: abs.filter(|p| p.starts_with('/')),
                function,
                lineno: f.line,
                package: None,
                module,
                platform: None,
                in_app,
            }
        } else {
            let package = f.module.as_deref().map(str::to_string);
            let filename = f.file.as_deref().map(str::to_string);
            let in_app = self.rules.is_in_app_frame(
                package.as_deref(),
                function.as_deref(),
                filename.as_deref(),
            );
            let abs_path = filename.clone().filter(|p| p.starts_with('/'));
            Frame {
                instruction_addr: Some(format!("{:#x}", f.instruction_addr)),
                function,
                filename,
                abs_path,
                lineno: f.line,
                package,
                module: None,
                platform: None,
                in_app,
            }
        };
        let i = self.frames.len() as u32;
        self.frames.push(frame);
        self.frame_addrs.push(f.instruction_addr);
        self.frame_index.insert(f.clone(), i);
        i
    }

    /// Add one sample of thread `tid` (named `thread_name`, may be empty) taken at
    /// `unix_seconds`, with its stack leaf first (`frames` empty = idle/off-CPU).
    /// Refused when it would make the chunk span more than [`MAX_CHUNK_SPAN_SECS`].
    pub fn add_sample(
        &mut self,
        tid: i32,
        thread_name: &str,
        unix_seconds: f64,
        frames: &[ResolvedFrame],
    ) -> Result<(), SampleError> {
        if !unix_seconds.is_finite() || unix_seconds <= 0.0 {
            return Err(SampleError::BadTimestamp(unix_seconds));
        }
        let ts = round_micros(unix_seconds);
        let (lo, hi) = (self.min_ts.min(ts), self.max_ts.max(ts));
        if hi - lo > MAX_CHUNK_SPAN_SECS {
            return Err(SampleError::SpanExceeded(unix_seconds));
        }
        self.min_ts = lo;
        self.max_ts = hi;
        let mut stack = std::mem::take(&mut self.scratch);
        stack.clear();
        for f in frames {
            let i = self.intern_frame(f);
            stack.push(i);
        }
        let stack_id = match self.stack_index.get(&stack) {
            Some(&i) => i,
            None => {
                let i = self.stacks.len() as u32;
                self.stacks.push(stack.clone());
                self.stack_index.insert(stack.clone(), i);
                i
            }
        };
        self.scratch = stack;
        self.samples.push(RawSample {
            timestamp: ts,
            tid,
            stack: stack_id,
            non_empty: !frames.is_empty(),
        });
        if !thread_name.is_empty() {
            match self.thread_names.get_mut(&tid) {
                Some(n) if n == thread_name => {}
                Some(n) => *n = thread_name.to_string(),
                None => {
                    self.thread_names.insert(tid, thread_name.to_string());
                }
            }
        }
        Ok(())
    }

    /// Samples added so far.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Seconds between the earliest and the latest sample added so far (0 when none).
    pub fn span_seconds(&self) -> f64 {
        if self.samples.is_empty() {
            0.0
        } else {
            self.max_ts - self.min_ts
        }
    }

    /// Earliest sample timestamp so far.
    pub fn first_timestamp(&self) -> Option<f64> {
        (!self.samples.is_empty()).then_some(self.min_ts)
    }

    /// Build the chunk: threads with fewer than two non-empty samples are dropped, frames,
    /// stacks and images not used by the remaining samples are left out, samples are sorted
    /// by time. None when no thread has two non-empty samples.
    pub fn finish(self) -> Option<ProfileChunk> {
        let mut non_empty: HashMap<i32, usize> = HashMap::new();
        for s in self.samples.iter().filter(|s| s.non_empty) {
            *non_empty.entry(s.tid).or_default() += 1;
        }
        let mut kept: Vec<&RawSample> = self
            .samples
            .iter()
            .filter(|s| non_empty.get(&s.tid).is_some_and(|&n| n >= 2))
            .collect();
        if kept.is_empty() {
            return None;
        }
        kept.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));

        let mut stack_map: HashMap<u32, usize> = HashMap::new();
        let mut frame_map: HashMap<u32, usize> = HashMap::new();
        let mut stacks: Vec<Vec<usize>> = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut used_addrs: Vec<(u64, Option<&str>)> = Vec::new();
        let mut samples = Vec::with_capacity(kept.len());
        let mut threads: BTreeMap<String, ThreadMeta> = BTreeMap::new();
        for s in &kept {
            let stack_id = *stack_map.entry(s.stack).or_insert_with(|| {
                let new_stack = self.stacks[s.stack as usize]
                    .iter()
                    .map(|&fi| {
                        *frame_map.entry(fi).or_insert_with(|| {
                            let f = &self.frames[fi as usize];
                            used_addrs.push((self.frame_addrs[fi as usize], f.package.as_deref()));
                            frames.push(f.clone());
                            frames.len() - 1
                        })
                    })
                    .collect();
                stacks.push(new_stack);
                stacks.len() - 1
            });
            let tid = s.tid.to_string();
            threads.entry(tid.clone()).or_insert_with(|| ThreadMeta {
                name: self.thread_names.get(&s.tid).cloned(),
            });
            samples.push(Sample {
                timestamp: s.timestamp,
                thread_id: tid,
                stack_id,
            });
        }

        let arch = std::env::consts::ARCH.to_string();
        let images = self
            .images
            .iter()
            .filter(|img| {
                used_addrs
                    .iter()
                    .any(|&(a, pkg)| img.contains(a) || pkg == Some(img.code_file.as_str()))
            })
            .map(|img| DebugImage {
                image_type: "symbolic".to_string(),
                code_file: img.code_file.clone(),
                debug_id: img.debug_id.clone(),
                code_id: img.code_id.clone(),
                arch: Some(arch.clone()),
                image_addr: format!("{:#x}", img.image_addr),
                image_size: img.image_size,
                image_vmaddr: format!("{:#x}", img.image_vmaddr),
            })
            .collect();

        // A chunk with Python frames is a Python chunk, as sentry-python's are; each frame then
        // says which kind it is, and native frames come named (Sentry does not symbolicate
        // Python chunks).
        if self.has_python {
            for f in &mut frames {
                f.platform = Some(
                    if f.instruction_addr.is_none() {
                        PYTHON_PLATFORM
                    } else {
                        "native"
                    }
                    .to_string(),
                );
            }
        }
        Some(ProfileChunk {
            version: "2".to_string(),
            platform: if self.has_python {
                PYTHON_PLATFORM
            } else {
                PLATFORM
            }
            .to_string(),
            profiler_id: self.meta.profiler_id.clone(),
            chunk_id: new_id(),
            client_sdk: ClientSdk {
                name: SDK_NAME.to_string(),
                version: SDK_VERSION.to_string(),
            },
            release: self.meta.release.clone(),
            environment: self.meta.environment.clone(),
            debug_meta: DebugMeta { images },
            profile: ProfileData {
                samples,
                stacks,
                frames,
                thread_metadata: threads,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    const EXE: &str = "/usr/local/bin/demo";
    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn fr(addr: u64, func: &str, module: &str) -> ResolvedFrame {
        ResolvedFrame {
            platform: FramePlatform::Native,
            instruction_addr: addr,
            function: Some(func.into()),
            file: Some("/src/demo.c".into()),
            line: Some(12),
            module: Some(module.into()),
        }
    }

    fn meta() -> ChunkMeta {
        ChunkMeta {
            profiler_id: new_profiler_id(),
            release: Some("demo@1.0".into()),
            environment: Some("test".into()),
        }
    }

    fn image(path: &str, addr: u64, size: u64) -> ImageInfo {
        ImageInfo {
            code_file: path.into(),
            debug_id: "c7ae1c45-0971-44ec-61b4-b9baaa58833f".into(),
            code_id: Some("451caec77109ec4461b4b9baaa58833f530dec65".into()),
            image_addr: addr,
            image_size: size,
            image_vmaddr: 0,
        }
    }

    fn to_value(c: &ProfileChunk) -> serde_json::Value {
        serde_json::from_slice(&c.to_json()).unwrap()
    }

    #[test]
    fn ids_are_32_lowercase_hex_and_unique() {
        let a = new_profiler_id();
        let b = new_profiler_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn dedup_leaf_first_threads_and_images() {
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        b.add_image(image(EXE, 0x5581_a3c0_0000, 0x5000));
        b.add_image(image(EXE, 0x5581_a3c0_0000, 0x5000)); // duplicate
        b.add_image(image(LIBC, 0x7f00_0000_0000, 0x20_0000));
        b.add_image(image("/usr/lib/unused.so", 0x7f10_0000_0000, 0x1000));
        let leaf = fr(0x5581_a3c0_1158, "compute", EXE);
        let main = fr(0x5581_a3c0_11a2, "main", EXE);
        let read = fr(0x7f00_0000_1234, "read", LIBC);
        let t0 = 1_763_724_000.010_120_2;
        b.add_sample(4242, "demo", t0, &[leaf.clone(), main.clone()])
            .unwrap();
        b.add_sample(4243, "worker", t0 + 0.001, &[read.clone(), main.clone()])
            .unwrap();
        b.add_sample(4242, "demo", t0 + 0.01, &[leaf.clone(), main.clone()])
            .unwrap();
        b.add_sample(4243, "worker", t0 + 0.011, &[]).unwrap();
        b.add_sample(4243, "worker", t0 + 0.021, &[read.clone(), main.clone()])
            .unwrap();
        assert_eq!(b.sample_count(), 5);
        assert!((b.span_seconds() - 0.021).abs() < 1e-6);
        let c = b.finish().unwrap();
        validate(&to_value(&c)).unwrap();

        assert_eq!(c.version, "2");
        assert_eq!(c.platform, "rust");
        assert_eq!(c.client_sdk.name, SDK_NAME);
        assert_eq!(c.client_sdk.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(c.chunk_id.len(), 32);
        let p = &c.profile;
        // 3 distinct frames, 3 distinct stacks ([leaf,main], [read,main], []).
        assert_eq!(p.frames.len(), 3);
        assert_eq!(p.stacks.len(), 3);
        let s0 = &p.stacks[p.samples[0].stack_id];
        assert_eq!(p.frames[s0[0]].function.as_deref(), Some("compute"));
        assert_eq!(p.frames[s0[1]].function.as_deref(), Some("main"));
        assert_eq!(
            p.frames[s0[0]].instruction_addr.as_deref(),
            Some("0x5581a3c01158")
        );
        assert_eq!(
            p.frames[s0[1]].instruction_addr.as_deref(),
            Some("0x5581a3c011a2")
        );
        assert_eq!(p.frames[s0[0]].package.as_deref(), Some(EXE));
        assert_eq!(p.frames[s0[0]].abs_path.as_deref(), Some("/src/demo.c"));
        assert_eq!(p.frames[s0[0]].lineno, Some(12));
        assert!(p.frames[s0[0]].in_app);
        let libc_frame = p
            .frames
            .iter()
            .find(|f| f.function.as_deref() == Some("read"))
            .unwrap();
        assert!(!libc_frame.in_app);
        // Same stack reused by the third sample.
        assert_eq!(p.samples[0].stack_id, p.samples[2].stack_id);
        // Sorted, µs precision, string tids.
        assert!(
            p.samples
                .windows(2)
                .all(|w| w[0].timestamp <= w[1].timestamp)
        );
        assert_eq!(p.samples[0].timestamp, 1_763_724_000.010_12);
        assert_eq!(p.samples[1].thread_id, "4243");
        assert_eq!(p.thread_metadata["4242"].name.as_deref(), Some("demo"));
        assert_eq!(p.thread_metadata["4243"].name.as_deref(), Some("worker"));
        // Images: exe + libc, not the unused one, not the duplicate.
        let files: Vec<_> = c
            .debug_meta
            .images
            .iter()
            .map(|i| i.code_file.as_str())
            .collect();
        assert_eq!(files, vec![EXE, LIBC]);
        let v = to_value(&c);
        let img = &v["debug_meta"]["images"][0];
        assert_eq!(img["type"], "symbolic");
        assert_eq!(img["image_addr"], "0x5581a3c00000");
        assert_eq!(img["image_vmaddr"], "0x0");
        assert_eq!(img["image_size"], 0x5000);
        assert_eq!(img["debug_id"], "c7ae1c45-0971-44ec-61b4-b9baaa58833f");
        assert!(v["profile"]["samples"][0]["thread_id"].is_string());
        assert!(v["profile"]["samples"][0]["timestamp"].is_f64());
    }

    #[test]
    fn inlined_frames_share_their_address() {
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        let inl = fr(0x1000, "inner_inlined", EXE);
        let outer = fr(0x1000, "outer", EXE);
        b.add_sample(1, "t", 100.0, &[inl.clone(), outer.clone()])
            .unwrap();
        b.add_sample(1, "t", 100.01, &[inl, outer]).unwrap();
        let c = b.finish().unwrap();
        let st = &c.profile.stacks[0];
        assert_eq!(st.len(), 2);
        assert_ne!(st[0], st[1]);
        assert_eq!(
            c.profile.frames[st[0]].instruction_addr.as_deref(),
            Some("0x1000")
        );
        assert_eq!(
            c.profile.frames[st[1]].instruction_addr.as_deref(),
            Some("0x1000")
        );
        assert_eq!(
            c.profile.frames[st[0]].function.as_deref(),
            Some("inner_inlined")
        );
    }

    #[test]
    fn single_sample_threads_dropped_and_empty_chunk_is_none() {
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        let f = fr(0x1000, "f", EXE);
        b.add_sample(1, "one", 10.0, std::slice::from_ref(&f))
            .unwrap();
        b.add_sample(1, "one", 10.01, &[]).unwrap();
        b.add_sample(1, "one", 10.02, &[]).unwrap();
        b.add_sample(2, "two", 10.0, std::slice::from_ref(&f))
            .unwrap();
        assert!(b.finish().is_none(), "no thread has 2 non-empty samples");

        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        let g = fr(0x2000, "g", EXE);
        b.add_sample(1, "one", 10.0, std::slice::from_ref(&g))
            .unwrap();
        b.add_sample(2, "two", 10.0, std::slice::from_ref(&f))
            .unwrap();
        b.add_sample(2, "two", 10.01, &[]).unwrap();
        b.add_sample(2, "two", 10.02, std::slice::from_ref(&f))
            .unwrap();
        let c = b.finish().unwrap();
        validate(&to_value(&c)).unwrap();
        assert!(c.profile.samples.iter().all(|s| s.thread_id == "2"));
        assert_eq!(c.profile.samples.len(), 3);
        assert!(!c.profile.thread_metadata.contains_key("1"));
        // Thread 1's frame `g` is not in the chunk.
        assert!(
            c.profile
                .frames
                .iter()
                .all(|f| f.function.as_deref() != Some("g"))
        );
        let empty = ChunkBuilder::new(&meta(), &InAppRules::default());
        assert!(empty.finish().is_none());
    }

    #[test]
    fn image_from_own_executable_and_profiler_id() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let img =
            ImageInfo::from_elf("/proc/self/exe", &data, 0x5555_0000_0000, 0x10_0000).unwrap();
        let ids = crate::debug_id::elf_ids(&data).unwrap();
        assert_eq!(img.debug_id, ids.debug_id);
        assert_eq!(img.code_id, ids.code_id);
        assert_eq!(img.image_vmaddr, ids.first_vaddr);
        assert!(img.contains(0x5555_0000_0000) && img.contains(0x5555_000f_ffff));
        assert!(!img.contains(0x5555_0010_0000) && !img.contains(0x5554_ffff_ffff));
        assert!(ImageInfo::from_elf("x", b"junk", 0, 1).is_none());
        let id = new_profiler_id();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn span_over_65s_refused() {
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        let f = [fr(0x1000, "f", EXE)];
        b.add_sample(1, "t", 1000.0, &f).unwrap();
        b.add_sample(1, "t", 1065.0, &f).unwrap();
        assert_eq!(
            b.add_sample(1, "t", 1065.5, &f),
            Err(SampleError::SpanExceeded(1065.5))
        );
        assert_eq!(
            b.add_sample(1, "t", 999.0, &f),
            Err(SampleError::SpanExceeded(999.0))
        );
        assert!(matches!(
            b.add_sample(1, "t", f64::NAN, &f),
            Err(SampleError::BadTimestamp(_))
        ));
        assert_eq!(b.sample_count(), 2);
        let c = b.finish().unwrap();
        assert!(c.span_seconds() <= MAX_CHUNK_SPAN_SECS);
        validate(&to_value(&c)).unwrap();
    }

    #[test]
    fn applies_user_rules() {
        let rules = InAppRules::new(&["*"], &["core::*"]);
        let mut b = ChunkBuilder::new(&meta(), &rules);
        let rust = ResolvedFrame {
            instruction_addr: 0x10,
            function: Some("core::fmt::write".into()),
            module: Some(LIBC.into()),
            ..Default::default()
        };
        let cpp = ResolvedFrame {
            instruction_addr: 0x20,
            function: Some("std::vector<int, std::allocator<int> >::push_back(int const&)".into()),
            module: Some(LIBC.into()),
            ..Default::default()
        };
        b.add_sample(1, "", 5.0, &[rust.clone(), cpp.clone()])
            .unwrap();
        b.add_sample(1, "", 5.1, &[rust, cpp]).unwrap();
        let c = b.finish().unwrap();
        assert_eq!(
            c.profile.frames[0].function.as_deref(),
            Some("core::fmt::write")
        );
        assert!(!c.profile.frames[0].in_app);
        assert!(
            c.profile.frames[1]
                .function
                .as_deref()
                .unwrap()
                .starts_with("std::vector<int")
        );
        assert!(c.profile.frames[1].in_app, "`*` makes libc frames in-app");
        assert_eq!(c.profile.thread_metadata["1"].name, None);
        assert!(c.debug_meta.images.is_empty());
    }

    #[test]
    fn python_chunks_say_which_frames_are_python_and_pass_the_validator() {
        let py = |func: &str, file: &str, module: &str, line| ResolvedFrame {
            platform: FramePlatform::Python,
            instruction_addr: 0,
            function: Some(func.into()),
            file: Some(file.into()),
            line: Some(line),
            module: Some(module.into()),
        };
        let stack = [
            py("Walker.step", "/srv/app/work.py", "work", 46),
            fr(0x7f00_0000_1000, "__qsort_r", LIBC),
            py(
                "Thread.run",
                "/usr/lib/python3.11/threading.py",
                "threading",
                971,
            ),
            py(
                "View.dispatch",
                "/srv/venv/lib/python3.11/site-packages/flask/views.py",
                "flask.views",
                10,
            ),
        ];
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        b.add_sample(7, "w", 1_700_000_000.0, &stack).unwrap();
        b.add_sample(7, "w", 1_700_000_000.01, &stack).unwrap();
        let c = b.finish().unwrap();
        assert_eq!(c.platform, PYTHON_PLATFORM);
        let f = &c.profile.frames;
        assert_eq!(f[0].platform.as_deref(), Some("python"));
        assert_eq!(f[0].instruction_addr, None);
        assert_eq!(f[0].filename.as_deref(), Some("work.py"));
        assert_eq!(f[0].abs_path.as_deref(), Some("/srv/app/work.py"));
        assert_eq!(f[0].module.as_deref(), Some("work"));
        assert!(f[0].in_app);
        assert_eq!(f[1].platform.as_deref(), Some("native"));
        assert!(f[1].instruction_addr.is_some());
        assert!(!f[2].in_app, "the standard library is not app code");
        assert_eq!(f[3].filename.as_deref(), Some("flask/views.py"));
        assert!(!f[3].in_app, "installed packages are not app code");
        let json: serde_json::Value = serde_json::from_slice(&c.to_json()).unwrap();
        validate(&json).unwrap();
        // A chunk without Python frames stays a native one, without per-frame platforms.
        let mut b = ChunkBuilder::new(&meta(), &InAppRules::default());
        b.add_sample(7, "w", 1_700_000_000.0, &stack[1..2]).unwrap();
        b.add_sample(7, "w", 1_700_000_000.01, &stack[1..2])
            .unwrap();
        let c = b.finish().unwrap();
        assert_eq!(c.platform, PLATFORM);
        assert_eq!(c.profile.frames[0].platform, None);
    }
}
