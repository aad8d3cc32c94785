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

use anyhow::{Context, Result, anyhow, bail};

use crate::config::SentryConfig;
use crate::os::proc;
use crate::types::Pid;
use profiler_sentry::{ChunkMeta, InAppRules};

/// Check, with the agent's final privileges and before any target is touched, that the
/// Sentry side can keep what it makes: the spool directory is the agent's own (created if
/// missing), or the envelope output can be written. A session does the same again when it
/// starts; this finds a bad path before waiting for a target.
pub fn preflight(sc: &SentryConfig) -> Result<()> {
    if sc.dsn.is_some() {
        spool::secure_dir(&sc.spool_dir)
            .map_err(|e| anyhow!("cannot use spool directory {}: {e}", sc.spool_dir.display()))?;
    } else if let Some(o) = &sc.output {
        crate::sink::outpath::prepare_envelope_output(o).map_err(|why| {
            anyhow!(
                "cannot write envelopes to {}: {why}; nothing would be written there",
                o.display()
            )
        })?;
    }
    if let Some(f) = &sc.profiler_id_file
        && let Some(why) = crate::sink::outpath::parent_problem(f)
    {
        bail!("cannot write the profiler id to {}: {why}", f.display());
    }
    Ok(())
}

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
