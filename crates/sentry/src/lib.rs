#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! [`chunk`] builds one chunk per window from named samples ([`ChunkBuilder`]);
//! [`debug_id`] derives ELF debug ids; [`inapp`] decides `in_app`; [`envelope`] writes
//! and parses envelopes; [`dsn`] parses a DSN and its auth header; `validate` (feature
//! `validate`, for tests) re-checks a chunk the way Sentry's ingestion does.

pub mod chunk;
pub mod debug_id;
pub mod dsn;
pub mod envelope;
pub mod inapp;
pub mod python;
#[cfg(any(test, feature = "validate"))]
pub mod validate;

pub use chunk::{
    ChunkBuilder, ChunkMeta, FramePlatform, ImageInfo, MAX_CHUNK_SPAN_SECS, PLATFORM,
    PYTHON_PLATFORM, ProfileChunk, ResolvedFrame, SDK_NAME, SDK_VERSION, SampleError, new_id,
    new_profiler_id,
};
pub use debug_id::{debug_id_from_build_id, debug_id_from_text};
pub use dsn::{Dsn, DsnError};
pub use inapp::InAppRules;
#[cfg(any(test, feature = "validate"))]
pub use validate::validate;
