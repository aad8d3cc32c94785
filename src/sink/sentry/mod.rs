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

pub mod chunks;

pub use chunks::{ChunkOut, SentrySink};

use anyhow::{Context, Result, anyhow};

use crate::config::SentryConfig;
use crate::os::proc;
use crate::types::Pid;
use profiler_sentry::{ChunkMeta, InAppRules};

/// Set up the Sentry side of a session: a new `profiler_id` (written to
/// `--profiler-id-file`), the uploader thread, and the sink that makes chunks. Every step
/// that can fail is here, so a session can do them all before it seizes the target.
pub fn start(
    sc: &SentryConfig,
    pid: Pid,
    wall0: std::time::SystemTime,
    progress: &mut dyn FnMut(&str),
) -> Result<SentrySink> {
    let profiler_id = profiler_sentry::new_profiler_id();
    if let Some(f) = &sc.profiler_id_file {
        write_profiler_id(f, &profiler_id)
            .with_context(|| format!("writing the profiler id to {}", f.display()))?;
    }
    let (tx, rx) = crossbeam_channel::bounded(64);
    let mut ucfg = UploadConfig::new(sc.dsn.clone(), sc.output.clone(), sc.spool_dir.clone());
    ucfg.spool_max_bytes = sc.spool_max_bytes;
    ucfg.flush_timeout = sc.flush_timeout;
    let handle = Uploader::spawn(ucfg, rx).map_err(|e| anyhow!("starting the uploader: {e}"))?;
    progress(&format!("profiler_id {profiler_id}"));
    let exe = proc::exe_path(pid).unwrap_or_default();
    let in_app = InAppRules::new(&sc.in_app, &sc.not_in_app).with_main_executable(&exe);
    let meta = ChunkMeta {
        profiler_id,
        release: sc.release.clone(),
        environment: sc.environment.clone(),
    };
    let wall = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let out = ChunkOut::Uploader {
        chunks: tx,
        handle,
        output: if sc.dsn.is_some() {
            None
        } else {
            sc.output.clone()
        },
    };
    Ok(SentrySink::new(meta, in_app, wall, sc.chunk_seconds, out))
}
