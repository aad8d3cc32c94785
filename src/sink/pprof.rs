//! pprof's format (`*.pb.gz`): a gzipped `perftools.profiles.Profile` message, as
//! `go tool pprof` and other pprof tools read it. The messages are declared here with
//! prost (field numbers as in pprof's `profile.proto`), only those the agent fills.
//!
//! Samples are aggregated by (thread, stack); each carries two values, the sample count
//! and the time they stand for (`cpu` nanoseconds, or `wall` nanoseconds with `--idle`),
//! and labels `thread` (the name) and `thread_id`. One location per unique address, its
//! inlined functions as lines innermost first (pprof's order); one function per (name,
//! file); one mapping per module. Markers of stacks that ended early (`[truncated]`)
//! are functions without an address.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use prost::Message;
use rustc_hash::FxHashMap;

use super::output::{self, Format, OutputFile};
use super::{SampleRef, SessionInfo, Sink, SinkReport, Span};
use crate::pipeline::profile::{StackId, Store};
use crate::pipeline::{FrameKind, NO_MODULE};
use crate::types::Tid;

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each value of a sample is.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Mapped modules.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Addresses with their functions.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string; the first is "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Start, Unix nanoseconds.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// Length, nanoseconds.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What one sampling period is.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The sampling period.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indexes).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The value pprof shows by default (string index of its type).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `ValueType`: a value's type and unit, as string indexes.
#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    /// Type.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Locations, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index), or 0.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
}

/// `Mapping`.
#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    /// Id (1-based).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Lowest address.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End address.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Path (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// GNU build-id in hex (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Functions are named.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Files are named.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Lines are given.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Inlined functions are given.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `Location`.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    /// Id (1-based).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its mapping, or 0.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// Absolute address (the return address for callers), or 0.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Functions at this address, innermost (inlined) first, the caller last.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

/// `Line`.
#[derive(Clone, PartialEq, Message)]
pub struct Line {
    /// Function id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line, or 0.
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `Function`.
#[derive(Clone, PartialEq, Message)]
pub struct Function {
    /// Id (1-based).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Name as the system knows it (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// The pprof sink.
pub struct PprofSink {
    outputs: Arc<Vec<OutputFile>>,
    info: SessionInfo,
    counts: FxHashMap<(Tid, u32, StackId), i64>,
    span: Span,
}

/// Strings interned into a profile's string table.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

impl PprofSink {
    /// A sink writing the pprof ones of `outputs`.
    pub fn new(outputs: Arc<Vec<OutputFile>>, info: SessionInfo) -> Self {
        PprofSink {
            outputs,
            info,
            counts: FxHashMap::default(),
            span: Span::default(),
        }
    }

    /// True when `outputs` holds a pprof file.
    pub fn wanted(outputs: &[OutputFile]) -> bool {
        outputs.iter().any(|o| o.format == Format::Pprof)
    }

    /// The profile message.
    pub fn profile(&self, store: &Store) -> Profile {
        let mut s = Strings::new();
        let period = self.info.period_ns() as i64;
        let kind = if self.info.idle { "wall" } else { "cpu" };
        let sample_type = vec![
            ValueType {
                r#type: s.get("samples"),
                unit: s.get("count"),
            },
            ValueType {
                r#type: s.get(kind),
                unit: s.get("nanoseconds"),
            },
        ];
        let mut p = Profile {
            sample_type,
            period_type: Some(ValueType {
                r#type: s.get(kind),
                unit: s.get("nanoseconds"),
            }),
            period,
            default_sample_type: s.get(kind),
            time_nanos: self
                .info
                .start
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            duration_nanos: (self.span.seconds(self.info.period_ns()) * 1e9) as i64,
            ..Default::default()
        };
        p.comment.push(s.get(&format!(
            "{} (pid {}) at {} Hz, {} samples",
            self.info.program,
            self.info.pid,
            self.info.frequency,
            self.info.mode()
        )));
        let mut mapping_of: HashMap<u32, u64> = HashMap::new();
        let mut function_of: HashMap<(Arc<str>, Option<Arc<str>>), u64> = HashMap::new();
        let mut location_of: Vec<Option<u64>> = Vec::new();
        let (thread_key, tid_key) = (s.get("thread"), s.get("thread_id"));
        let mut idx = Vec::new();
        let mut keys: Vec<_> = self.counts.iter().collect();
        keys.sort_unstable_by_key(|(k, _)| **k);
        for (&(tid, name, stack), &n) in keys {
            store.stack_frames(stack, &mut idx);
            let mut location_id = Vec::with_capacity(idx.len());
            for &f in &idx {
                let i = f as usize;
                if location_of.len() <= i {
                    location_of.resize(i + 1, None);
                }
                let id = match location_of[i] {
                    Some(id) => id,
                    None => {
                        let key = store.frame_key(f);
                        let names = store.names(f);
                        let is_marker = matches!(names[0].kind, FrameKind::Marker(_));
                        let mapping_id = if is_marker || key.module == NO_MODULE {
                            0
                        } else {
                            match store.module(key.module) {
                                Some(m) => *mapping_of.entry(key.module).or_insert_with(|| {
                                    let id = p.mapping.len() as u64 + 1;
                                    let build_id: String = m
                                        .facts
                                        .as_ref()
                                        .and_then(|f| f.build_id.as_ref())
                                        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                                        .unwrap_or_default();
                                    p.mapping.push(Mapping {
                                        id,
                                        memory_start: m.image_addr,
                                        memory_limit: m.image_addr + m.image_size,
                                        file_offset: 0,
                                        filename: s.get(&m.path),
                                        build_id: s.get(&build_id),
                                        has_functions: true,
                                        has_filenames: true,
                                        has_line_numbers: true,
                                        has_inline_frames: true,
                                    });
                                    id
                                }),
                                None => 0,
                            }
                        };
                        let line = names
                            .iter()
                            .map(|n| {
                                let fkey = (n.label.clone(), n.file.clone());
                                let function_id = match function_of.get(&fkey) {
                                    Some(&id) => id,
                                    None => {
                                        let id = p.function.len() as u64 + 1;
                                        let name = s.get(&n.label);
                                        p.function.push(Function {
                                            id,
                                            name,
                                            system_name: name,
                                            filename: n.file.as_deref().map_or(0, |f| s.get(f)),
                                        });
                                        function_of.insert(fkey, id);
                                        id
                                    }
                                };
                                Line {
                                    function_id,
                                    line: n.line.unwrap_or(0) as i64,
                                }
                            })
                            .collect();
                        let id = p.location.len() as u64 + 1;
                        p.location.push(Location {
                            id,
                            mapping_id,
                            address: if is_marker { 0 } else { key.addr },
                            line,
                        });
                        location_of[i] = Some(id);
                        id
                    }
                };
                location_id.push(id);
            }
            let label = vec![
                Label {
                    key: thread_key,
                    str: s.get(store.thread_name(name)),
                    num: 0,
                },
                Label {
                    key: tid_key,
                    str: 0,
                    num: tid as i64,
                },
            ];
            p.sample.push(Sample {
                location_id,
                value: vec![n, n * period],
                label,
            });
        }
        p.string_table = s.table;
        p
    }
}

impl Sink for PprofSink {
    fn on_sample(&mut self, sample: &SampleRef, _store: &Store) {
        self.span.see(sample.time_ns);
        if let Some(stack) = sample.stack.filter(|_| self.info.counts(sample)) {
            *self
                .counts
                .entry((sample.tid, sample.thread, stack))
                .or_default() += 1;
        }
    }

    fn reads_names_per_sample(&self) -> bool {
        false
    }

    fn keeps_stacks(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, store: &Store) -> SinkReport {
        output::write_format(
            &self.outputs,
            Format::Pprof,
            || self.profile(store).encode_to_vec(),
            |w, b: &Vec<u8>| write_gz(w, b),
        )
    }
}

fn write_gz(w: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    gz.write_all(bytes)?;
    gz.finish()?;
    Ok(())
}
