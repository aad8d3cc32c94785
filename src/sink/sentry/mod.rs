//! The Sentry sink's I/O: the upload thread, its transport, the rate limits it obeys and
//! the disk spool of chunks not yet accepted. The chunk format itself is the
//! `profiler-sentry` crate.

pub mod ratelimit;
pub mod spool;
pub mod transport;
pub mod uploader;

pub use uploader::{
    Level, Reporter, UploadConfig, UploadError, UploadStats, Uploader, UploaderHandle,
};

/// Write `profiler_id` (plus a newline) to `path`, atomically (temporary file + rename), so
/// an application can read it and link its transactions to this session.
pub fn write_profiler_id(path: &std::path::Path, profiler_id: &str) -> std::io::Result<()> {
    spool::write_atomic(path, format!("{profiler_id}\n").as_bytes(), 0o644)
}
