//! Sentry continuous profiling: Sample format v2 chunks, envelopes, and their upload.
//!
//! Pieces: [`chunk`] builds one chunk per window from symbolized samples ([`ChunkBuilder`]);
//! [`debug_id`] derives ELF debug ids; [`inapp`] decides `in_app`; [`validate`] re-checks a
//! chunk with Relay's rules; [`envelope`] writes/parses envelopes; [`dsn`] parses the DSN;
//! [`ratelimit`] tracks Sentry rate limits; [`spool`] keeps unsent chunks on disk;
//! [`transport`] POSTs envelopes; [`uploader`] runs the upload thread (or writes files).
//! Formats follow `shared/docs/sentry-formats.md`.

pub mod chunk;
pub mod debug_id;
pub mod dsn;
pub mod envelope;
pub mod inapp;
pub mod ratelimit;
pub mod spool;
pub mod transport;
pub mod uploader;
pub mod validate;

pub use chunk::{
    ChunkBuilder, ChunkMeta, ImageInfo, MAX_CHUNK_SPAN_SECS, PLATFORM, ProfileChunk, ResolvedFrame,
    SDK_NAME, SDK_VERSION, SampleError, new_profiler_id, write_profiler_id,
};
pub use debug_id::{debug_id_from_build_id, debug_id_from_text};
pub use dsn::{Dsn, DsnError};
pub use inapp::InAppRules;
pub use uploader::{
    Level, Reporter, UploadConfig, UploadError, UploadStats, Uploader, UploaderHandle,
};
pub use validate::validate;
