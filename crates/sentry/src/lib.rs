//! Sentry continuous profiling as data: the Sample format v2 `profile_chunk` model and
//! its builder, ELF debug ids, `in_app` rules, DSNs and envelopes. No I/O: the caller
//! decides where envelopes go.
//!
//! Pieces: [`chunk`] builds one chunk per window from named samples ([`ChunkBuilder`]);
//! [`debug_id`] derives ELF debug ids; [`inapp`] decides `in_app`; [`envelope`] writes
//! and parses envelopes; [`dsn`] parses a DSN and its auth header; `validate` (feature
//! `validate`, for tests) re-checks a chunk the way Sentry's ingestion does. What these
//! payloads hold and why is described in the repository's `docs/sentry-format.md`.
//!
//! ```
//! use profiler_sentry::{ChunkBuilder, ChunkMeta, InAppRules, ResolvedFrame, new_profiler_id};
//!
//! let meta = ChunkMeta { profiler_id: new_profiler_id(), release: None, environment: None };
//! let mut b = ChunkBuilder::new(&meta, &InAppRules::default());
//! let leaf = ResolvedFrame {
//!     instruction_addr: 0x5555_0000_1234,
//!     function: Some("work".into()),
//!     module: Some("/usr/bin/app".into()),
//!     ..Default::default()
//! };
//! // Sentry keeps a thread only with two samples or more in a chunk.
//! b.add_sample(42, "worker", 1_700_000_000.00, &[leaf.clone()]).unwrap();
//! b.add_sample(42, "worker", 1_700_000_000.01, &[leaf]).unwrap();
//! let chunk = b.finish().expect("two samples of one thread make a chunk");
//! assert_eq!(chunk.sample_count(), 2);
//! ```

pub mod chunk;
pub mod debug_id;
pub mod dsn;
pub mod envelope;
pub mod inapp;
#[cfg(any(test, feature = "validate"))]
pub mod validate;

pub use chunk::{
    ChunkBuilder, ChunkMeta, ImageInfo, MAX_CHUNK_SPAN_SECS, PLATFORM, ProfileChunk, ResolvedFrame,
    SDK_NAME, SDK_VERSION, SampleError, new_id, new_profiler_id,
};
pub use debug_id::{debug_id_from_build_id, debug_id_from_text};
pub use dsn::{Dsn, DsnError};
pub use inapp::InAppRules;
#[cfg(any(test, feature = "validate"))]
pub use validate::validate;
