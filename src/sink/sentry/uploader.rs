//! The uploader thread: takes finished chunks from a channel and either writes them as
//! envelope files (no DSN) or spools and sends them to Sentry (DSN), honouring rate limits,
//! retrying failures with backoff, and counting everything for the closing summary.
//!
//! With a DSN every chunk is written to the spool first, sent, and deleted on a 2xx; chunks an
//! earlier run left in the spool are sent first (oldest first). 5xx, 408, timeouts and
//! connection failures are retried with exponential backoff and jitter (capped); a 429 or an
//! `X-Sentry-Rate-Limits` covering profile chunks pauses sending until it expires (chunks wait
//! in the spool); any other status is a rejection: that chunk is dropped and counted, and the
//! first rejection with each status is reported.
//!
//! Without a DSN, `output` is either a directory (each chunk as `<chunk_id>.envelope`) or a
//! file name ending in `.envelope`: the first chunk is written to exactly that name, the
//! n-th (n >= 2) to `<stem>.<n>.envelope` beside it (one chunk per file, since an envelope
//! may hold only one profile chunk). Files hold the exact envelope bytes that would be sent,
//! before gzip.
//!
//! Everything the uploader has to say goes through [`UploadConfig::reporter`], with the DSN
//! key masked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, never, select};
use serde::Deserialize;

use super::ratelimit::{PROFILE_CHUNK_CATEGORIES, RateLimits};
use super::spool::{Spool, SpoolEntry, write_atomic};
use super::transport::{HttpTransport, Response};
use profiler_sentry::Dsn;
use profiler_sentry::envelope::envelope_bytes;
use profiler_sentry::{ProfileChunk, SDK_NAME, SDK_VERSION};

/// Default bound of the spool directory.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest [`UploaderHandle::abort`] waits for the request already on its way.
const ABORT_WAIT_MAX: Duration = Duration::from_secs(5);
/// Default time [`UploaderHandle::finish`] keeps sending.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Severity of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Progress worth a line.
    Info,
    /// Something went wrong or data was lost.
    Warn,
}

/// Receives the uploader's messages (the key is already masked).
pub type Reporter = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// Uploader settings.
#[derive(Clone)]
pub struct UploadConfig {
    /// Where to send; None writes files to `output`.
    pub dsn: Option<Dsn>,
    /// Directory or `*.envelope` file for chunks when there is no DSN.
    pub output: Option<PathBuf>,
    /// Spool directory (used with a DSN).
    pub spool_dir: PathBuf,
    /// Bound of the spool in bytes.
    pub spool_max_bytes: u64,
    /// How long [`UploaderHandle::finish`] keeps sending.
    pub flush_timeout: Duration,
    /// `User-Agent` and `sentry_client`, `name/version`.
    pub user_agent: String,
    /// Bound of one HTTP request.
    pub request_timeout: Duration,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Message sink.
    pub reporter: Reporter,
}

impl std::fmt::Debug for UploadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadConfig")
            .field("dsn", &self.dsn)
            .field("output", &self.output)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("flush_timeout", &self.flush_timeout)
            .field("user_agent", &self.user_agent)
            .field("request_timeout", &self.request_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

impl UploadConfig {
    /// Defaults: 64 MiB spool, 10 s flush, 30 s requests, backoff 1 s doubling up to 60 s,
    /// reports printed to stderr as `profiler: warning: …` / `profiler: …`.
    pub fn new(dsn: Option<Dsn>, output: Option<PathBuf>, spool_dir: PathBuf) -> Self {
        UploadConfig {
            dsn,
            output,
            spool_dir,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            user_agent: format!("{SDK_NAME}/{SDK_VERSION}"),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            reporter: Arc::new(|level, msg| match level {
                Level::Warn => crate::to_stderr(&format!("profiler: warning: {msg}\n")),
                Level::Info => crate::to_stderr(&format!("profiler: {msg}\n")),
            }),
        }
    }
}

/// Why the uploader could not start.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Neither a DSN nor an output path.
    #[error("no Sentry DSN and no output path for profile chunks")]
    NoDestination,
    /// The spool directory cannot be used (or must not be: see `spool::secure_dir`).
    #[error("cannot use spool directory {path}: {source}")]
    Spool {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Envelope files cannot be written where asked.
    #[error("cannot write envelopes to {path}: {reason}; nothing would be written there")]
    Output {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The thread could not be started.
    #[error("cannot start the uploader thread: {0}")]
    Thread(std::io::Error),
}

/// Counters for the closing summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// True when writing envelope files (no DSN).
    pub to_files: bool,
    /// Chunks taken from the channel.
    pub chunks_received: u64,
    /// Envelope files written (no DSN).
    pub chunks_written: u64,
    /// Samples in the written files.
    pub samples_written: u64,
    /// Chunks stored in the spool by this run.
    pub chunks_spooled: u64,
    /// Chunks found in the spool at start (left by an earlier run).
    pub chunks_from_earlier_runs: u64,
    /// HTTP requests made (each attempt counts).
    pub requests: u64,
    /// Chunks accepted by Sentry (2xx).
    pub chunks_accepted: u64,
    /// Samples in the accepted chunks.
    pub samples_accepted: u64,
    /// Failed attempts that were retried later (5xx, 408, timeouts, connection failures).
    pub retries: u64,
    /// 429 responses.
    pub rate_limited_responses: u64,
    /// Time spent with chunks waiting while profile chunks were rate limited.
    pub rate_limited_time: Duration,
    /// Chunks dropped because Sentry rejected them (4xx other than 429, other statuses).
    pub dropped_rejected: u64,
    /// Chunks dropped because the spool was full (oldest first) or a chunk alone exceeded it.
    pub dropped_spool_full: u64,
    /// Chunks lost to I/O errors (spool or output write failed, unreadable spool file).
    pub dropped_io: u64,
    /// The first failed write (spool or envelope file): path and error.
    pub write_error: Option<String>,
    /// Chunks still in the spool when the uploader stopped.
    pub left_in_spool: u64,
    /// Chunks in the spool meant for other Sentry projects (kept, not sent) at the end.
    pub kept_for_others: u64,
    /// Files in the spool that were not chunks this agent wrote, deleted unsent.
    pub foreign_removed: u64,
}

impl std::fmt::Display for UploadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.to_files {
            write!(
                f,
                "{} chunks written ({} samples)",
                self.chunks_written, self.samples_written
            )?;
        } else {
            write!(
                f,
                "{} chunks accepted by Sentry ({} samples), {} requests, {} retries",
                self.chunks_accepted, self.samples_accepted, self.requests, self.retries
            )?;
        }
        if self.rate_limited_responses > 0 || !self.rate_limited_time.is_zero() {
            write!(
                f,
                ", rate limited {:.1} s ({} responses)",
                self.rate_limited_time.as_secs_f64(),
                self.rate_limited_responses
            )?;
        }
        let dropped = self.dropped_rejected + self.dropped_spool_full + self.dropped_io;
        if dropped > 0 {
            write!(
                f,
                ", {dropped} dropped ({} rejected, {} spool full, {} I/O)",
                self.dropped_rejected, self.dropped_spool_full, self.dropped_io
            )?;
        }
        if self.left_in_spool > 0 {
            write!(f, ", {} left in the spool", self.left_in_spool)?;
        }
        if self.kept_for_others > 0 {
            write!(
                f,
                ", {} for other projects kept in the spool",
                self.kept_for_others
            )?;
        }
        if self.foreign_removed > 0 {
            write!(
                f,
                ", {} spool files not written by this agent deleted unsent",
                self.foreign_removed
            )?;
        }
        Ok(())
    }
}

enum Control {
    Finish,
    Abort,
}

/// Starts the uploader thread.
pub struct Uploader;

/// The running uploader.
pub struct UploaderHandle {
    control: Sender<Control>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<UploadStats>>,
}

impl Uploader {
    /// Start the uploader on `rx`. With a DSN the spool is opened (and created) here, so a
    /// bad spool directory fails now; chunks left there by an earlier run are queued first.
    pub fn spawn(
        cfg: UploadConfig,
        rx: Receiver<ProfileChunk>,
    ) -> Result<UploaderHandle, UploadError> {
        let stats = Arc::new(Mutex::new(UploadStats::default()));
        let reporter = Reporter::clone(&cfg.reporter);
        let redactor = cfg.dsn.clone();
        let report: Reporter = Arc::new(move |level, msg: &str| match &redactor {
            Some(d) => reporter(level, &d.redact(msg)),
            None => reporter(level, msg),
        });
        let sink = match (&cfg.dsn, &cfg.output) {
            (Some(dsn), _) => {
                let (spool, found) =
                    Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &dsn.destination()).map_err(
                        |source| UploadError::Spool {
                            path: cfg.spool_dir.clone(),
                            source,
                        },
                    )?;
                if found.tmp_removed > 0 {
                    report(
                        Level::Info,
                        &format!(
                            "removed {} partly written chunk file(s) from the spool",
                            found.tmp_removed
                        ),
                    );
                }
                for (path, why) in &found.rejected {
                    report(
                        Level::Warn,
                        &format!(
                            "spool file {} is not a chunk this agent wrote ({why}); deleted, \
                             never sent",
                            path.display()
                        ),
                    );
                }
                for (dest, n) in &found.others {
                    report(
                        Level::Info,
                        &format!(
                            "{n} chunk(s) in the spool are for another Sentry project ({dest}): \
                             kept for an agent sending there, not sent to {}",
                            dsn.destination()
                        ),
                    );
                }
                stats.lock().unwrap().foreign_removed = found.rejected.len() as u64;
                if !spool.is_empty() {
                    report(
                        Level::Info,
                        &format!(
                            "{} chunk(s) left in the spool by an earlier run will be sent first",
                            spool.len()
                        ),
                    );
                }
                stats.lock().unwrap().chunks_from_earlier_runs = spool.len() as u64;
                let transport = HttpTransport::new(dsn, &cfg.user_agent, cfg.request_timeout);
                Sink::Http(Box::new(HttpSink::new(transport, spool, &cfg)?))
            }
            (None, Some(out)) => {
                stats.lock().unwrap().to_files = true;
                Sink::Files(FileSink::new(out)?)
            }
            (None, None) => return Err(UploadError::NoDestination),
        };
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let mut worker = Worker {
            rx,
            rx_open: true,
            control: ctl_rx,
            stats: Arc::clone(&stats),
            report,
            sink,
            flush_timeout: cfg.flush_timeout,
            request_timeout: cfg.request_timeout,
            deadline: None,
            aborted: false,
        };
        let thread = std::thread::Builder::new()
            .name("sentry-upload".into())
            .spawn(move || worker.run())
            .map_err(UploadError::Thread)?;
        Ok(UploaderHandle {
            control: ctl_tx,
            thread: Some(thread),
            stats,
        })
    }
}

impl UploaderHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> UploadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Take what is already in the channel, keep sending for up to the flush timeout, stop.
    /// What is not accepted by then stays in the spool for the next run.
    pub fn finish(mut self) -> UploadStats {
        self.stop(Control::Finish)
    }

    /// Stop as soon as the current request (if any) ends (within its timeout, 5 s at
    /// most), without flushing; the spool keeps everything not yet accepted. Dropping the
    /// handle does the same.
    pub fn abort(mut self) -> UploadStats {
        self.stop(Control::Abort)
    }

    fn stop(&mut self, how: Control) -> UploadStats {
        if let Some(t) = self.thread.take() {
            let _ = self.control.send(how);
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for UploaderHandle {
    fn drop(&mut self) {
        self.stop(Control::Abort);
    }
}

/// What the sender needs from a spooled payload.
#[derive(Deserialize)]
struct ChunkInfo {
    version: String,
    chunk_id: String,
    platform: String,
    profile: SampleList,
}

#[derive(Deserialize)]
struct SampleList {
    samples: Vec<serde::de::IgnoredAny>,
}

enum Sink {
    Http(Box<HttpSink>),
    Files(FileSink),
}

/// The request being answered by the HTTP thread.
struct InFlight {
    entry: SpoolEntry,
    samples: u64,
}

struct HttpSink {
    url: String,
    /// Envelopes to the HTTP thread; dropping it ends that thread.
    requests: Sender<Vec<u8>>,
    /// Set when the uploader stops: the HTTP thread starts no request after that (the chunk
    /// stays in the spool; sending it later too would send it twice).
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// Its answers.
    responses: Receiver<Response>,
    in_flight: Option<InFlight>,
    spool: Spool,
    limits: RateLimits,
    backoff_until: Option<Instant>,
    failures: u32,
    warned_status: HashSet<u16>,
    rl_wait_since: Option<Instant>,
    rl_reported_until: Option<Instant>,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl HttpSink {
    /// Start the HTTP thread. It makes one request at a time and ends when `requests` is
    /// dropped; a request still running when the uploader stops is left to finish on its own.
    fn new(
        transport: HttpTransport,
        spool: Spool,
        cfg: &UploadConfig,
    ) -> Result<Self, UploadError> {
        let url = transport.url().to_string();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopped);
        let (req_tx, req_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (resp_tx, resp_rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("sentry-http".into())
            .spawn(move || {
                for envelope in req_rx {
                    let Some(response) = transport.send_unless(&envelope, &stop_flag) else {
                        break;
                    };
                    if resp_tx.send(response).is_err() {
                        break;
                    }
                }
            })
            .map_err(UploadError::Thread)?;
        Ok(HttpSink {
            url,
            requests: req_tx,
            stopped,
            responses: resp_rx,
            in_flight: None,
            spool,
            limits: RateLimits::new(),
            backoff_until: None,
            failures: 0,
            warned_status: HashSet::new(),
            rl_wait_since: None,
            rl_reported_until: None,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
        })
    }

    /// Delay before retry number `failures` (1-based): initial * 2^(n-1), capped, times a
    /// random factor in [0.5, 1).
    fn backoff(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        let full = self
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        full.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

enum OutputTarget {
    Dir(PathBuf),
    File(PathBuf),
}

struct FileSink {
    target: OutputTarget,
    written: u64,
}

impl FileSink {
    /// Check (and create) the output now, before any chunk: see
    /// `outpath::prepare_envelope_output`.
    fn new(out: &Path) -> Result<Self, UploadError> {
        let is_file = crate::sink::outpath::prepare_envelope_output(out).map_err(|reason| {
            UploadError::Output {
                path: out.to_path_buf(),
                reason,
            }
        })?;
        Ok(FileSink {
            target: if is_file {
                OutputTarget::File(out.to_path_buf())
            } else {
                OutputTarget::Dir(out.to_path_buf())
            },
            written: 0,
        })
    }

    /// The path of the next chunk.
    fn path_for(&self, chunk_id: &str) -> PathBuf {
        match &self.target {
            OutputTarget::Dir(d) => d.join(format!("{chunk_id}.envelope")),
            OutputTarget::File(f) if self.written == 0 => f.clone(),
            OutputTarget::File(f) => {
                let name = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("chunk.envelope");
                let stem = name.strip_suffix(".envelope").unwrap_or(name);
                f.with_file_name(format!("{stem}.{}.envelope", self.written + 1))
            }
        }
    }
}

fn bump(stats: &Mutex<UploadStats>, f: impl FnOnce(&mut UploadStats)) {
    f(&mut stats.lock().unwrap());
}

struct Worker {
    rx: Receiver<ProfileChunk>,
    rx_open: bool,
    control: Receiver<Control>,
    stats: Arc<Mutex<UploadStats>>,
    report: Reporter,
    sink: Sink,
    flush_timeout: Duration,
    request_timeout: Duration,
    deadline: Option<Instant>,
    aborted: bool,
}

impl Worker {
    fn on_control(&mut self, c: Control) {
        match c {
            Control::Finish => {
                self.deadline
                    .get_or_insert(Instant::now() + self.flush_timeout);
            }
            Control::Abort => self.aborted = true,
        }
    }

    fn drain_rx(&mut self) {
        while self.rx_open {
            match self.rx.try_recv() {
                Ok(c) => self.accept(c),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => self.rx_open = false,
            }
        }
    }

    fn in_flight(&self) -> bool {
        matches!(&self.sink, Sink::Http(h) if h.in_flight.is_some())
    }

    fn run(&mut self) {
        loop {
            self.drain_rx();
            while let Ok(c) = self.control.try_recv() {
                self.on_control(c);
            }
            if self.aborted {
                break;
            }
            if !self.rx_open && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.flush_timeout);
            }
            let now = Instant::now();
            let ready_at = self.ready_at(now);
            let in_flight = self.in_flight();
            self.track_rate_limit(now);
            if let Some(d) = self.deadline {
                if now >= d {
                    break;
                }
                // Nothing running and nothing that could start before the deadline.
                if !in_flight && ready_at.is_none_or(|r| r > d) {
                    break;
                }
            }
            if ready_at.is_some_and(|t| t <= now) {
                self.start_send();
                continue;
            }
            let wake = match (ready_at, self.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(now)
            });
            let rx = if self.rx_open {
                self.rx.clone()
            } else {
                never()
            };
            let responses = match &self.sink {
                Sink::Http(h) => h.responses.clone(),
                Sink::Files(_) => never(),
            };
            select! {
                recv(rx) -> msg => match msg {
                    Ok(c) => self.accept(c),
                    Err(_) => self.rx_open = false,
                },
                recv(self.control) -> c => match c {
                    Ok(c) => self.on_control(c),
                    Err(_) => self.aborted = true,
                },
                recv(responses) -> r => match r {
                    Ok(r) => self.on_response(r),
                    Err(_) => {
                        (self.report)(Level::Warn, "the HTTP thread stopped; uploads end here");
                        self.aborted = true;
                    }
                },
                default(timeout) => {}
            }
        }
        if self.aborted {
            self.await_in_flight();
        }
        self.finish_up();
    }

    /// Let the request already on its way end (within its timeout) and take its answer: a
    /// chunk Sentry accepts after the uploader stopped would otherwise stay in the spool and
    /// be sent again by the next run.
    fn await_in_flight(&mut self) {
        let Sink::Http(h) = &self.sink else { return };
        if h.in_flight.is_none() {
            return;
        }
        if let Ok(r) = h
            .responses
            .recv_timeout(self.request_timeout.min(ABORT_WAIT_MAX))
        {
            self.on_response(r);
        }
    }

    fn finish_up(&mut self) {
        let now = Instant::now();
        if let Sink::Http(h) = &mut self.sink {
            let wait = h.rl_wait_since.take().map(|t| now - t);
            let left = h.spool.len() as u64;
            let others = h.spool.others() as u64;
            bump(&self.stats, |s| {
                s.left_in_spool = left;
                s.kept_for_others = others;
                if let Some(w) = wait {
                    s.rate_limited_time += w;
                }
            });
            if left > 0 {
                (self.report)(
                    Level::Info,
                    &format!(
                        "{left} chunk(s) not yet accepted stay in the spool and will be sent by the next run"
                    ),
                );
            }
        }
    }

    /// When the oldest pending chunk may be sent; None when nothing is pending or a request
    /// is running.
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        let Sink::Http(h) = &self.sink else {
            return None;
        };
        if h.spool.is_empty() || h.in_flight.is_some() {
            return None;
        }
        let mut t = now;
        if let Some(b) = h.backoff_until {
            t = t.max(b);
        }
        if let Some(r) = h.limits.blocked_until(PROFILE_CHUNK_CATEGORIES, now) {
            t = t.max(r);
        }
        Some(t)
    }

    fn track_rate_limit(&mut self, now: Instant) {
        let Sink::Http(h) = &mut self.sink else {
            return;
        };
        let blocked = !h.spool.is_empty()
            && h.limits
                .blocked_until(PROFILE_CHUNK_CATEGORIES, now)
                .is_some();
        let mut add = None;
        match (blocked, h.rl_wait_since) {
            (true, None) => h.rl_wait_since = Some(now),
            (false, Some(t)) => {
                add = Some(now - t);
                h.rl_wait_since = None;
            }
            _ => {}
        }
        if let Some(d) = add {
            bump(&self.stats, |s| s.rate_limited_time += d);
        }
    }

    fn accept(&mut self, chunk: ProfileChunk) {
        let samples = chunk.sample_count() as u64;
        let Worker {
            sink,
            stats,
            report,
            ..
        } = self;
        let warn = |m: &str| report(Level::Warn, m);
        bump(stats, |s| s.chunks_received += 1);
        match sink {
            Sink::Files(f) => {
                let path = f.path_for(chunk.chunk_id());
                let bytes = chunk.to_envelope(SystemTime::now());
                match write_atomic(&path, &bytes, 0o644) {
                    Ok(()) => {
                        f.written += 1;
                        bump(stats, |s| {
                            s.chunks_written += 1;
                            s.samples_written += samples;
                        });
                    }
                    Err(e) => {
                        bump(stats, |s| {
                            s.dropped_io += 1;
                            s.write_error
                                .get_or_insert_with(|| format!("{}: {e}", path.display()));
                        });
                        warn(&format!(
                            "cannot write chunk {} to {}: {e}; chunk dropped",
                            chunk.chunk_id(),
                            path.display()
                        ));
                    }
                }
            }
            Sink::Http(h) => {
                let payload = chunk.to_json();
                match h.spool.push(chunk.chunk_id(), &payload) {
                    Ok(out) => {
                        let evicted = out.evicted.len() as u64;
                        let stored = !out.too_large;
                        bump(stats, |s| {
                            s.dropped_spool_full += evicted + u64::from(out.too_large);
                            if stored {
                                s.chunks_spooled += 1;
                            }
                        });
                        for e in &out.evicted {
                            warn(&format!(
                                "spool full: dropped the oldest chunk {} ({} bytes) to make room",
                                e.chunk_id(),
                                e.size
                            ));
                        }
                        if out.too_large {
                            warn(&format!(
                                "chunk {} ({} bytes) is larger than the whole spool; chunk dropped",
                                chunk.chunk_id(),
                                payload.len()
                            ));
                        }
                    }
                    Err(e) => {
                        bump(stats, |s| {
                            s.dropped_io += 1;
                            s.write_error
                                .get_or_insert_with(|| format!("{}: {e}", h.spool.dir().display()));
                        });
                        warn(&format!(
                            "cannot write chunk {} to the spool {}: {e}; chunk dropped",
                            chunk.chunk_id(),
                            h.spool.dir().display()
                        ));
                    }
                }
            }
        }
    }

    /// Hand the oldest spooled chunk to the HTTP thread.
    fn start_send(&mut self) {
        let Worker {
            sink,
            stats,
            report,
            ..
        } = self;
        let Sink::Http(h) = sink else { return };
        let Some(entry) = h.spool.front().cloned() else {
            return;
        };
        let parsed = h.spool.read(&entry).and_then(|p| {
            let info = serde_json::from_slice::<ChunkInfo>(&p)
                .map_err(|e| format!("not a profile chunk: {e}"))?;
            if info.version != "2" || info.chunk_id != entry.chunk_id() {
                return Err(format!(
                    "not a profile chunk of this agent (version {:?}, chunk_id {:?})",
                    info.version, info.chunk_id
                ));
            }
            Ok((p, info))
        });
        let (payload, info) = match parsed {
            Ok(x) => x,
            Err(e) => {
                h.spool.remove(&entry);
                bump(stats, |s| s.foreign_removed += 1);
                report(
                    Level::Warn,
                    &format!(
                        "spool file {} is not a chunk this agent wrote ({e}); deleted, never sent",
                        entry.path.display()
                    ),
                );
                return;
            }
        };
        let envelope = envelope_bytes(&payload, &info.platform, SystemTime::now());
        bump(stats, |s| s.requests += 1);
        if h.requests.send(envelope).is_err() {
            report(Level::Warn, "the HTTP thread stopped; uploads end here");
            return;
        }
        h.in_flight = Some(InFlight {
            entry,
            samples: info.profile.samples.len() as u64,
        });
    }

    /// Act on the answer to the running request.
    fn on_response(&mut self, response: Response) {
        let Worker {
            sink,
            stats,
            report,
            ..
        } = self;
        let Sink::Http(h) = sink else { return };
        let Some(InFlight { entry, samples }) = h.in_flight.take() else {
            return;
        };
        let id = entry.chunk_id().to_string();
        let now = Instant::now();
        let mut msgs: Vec<(Level, String)> = Vec::new();
        let retry_reason = match response {
            Response::Http {
                status,
                rate_limits,
                retry_after,
                body,
            } => {
                h.limits.update_from_response(
                    status,
                    rate_limits.as_deref(),
                    retry_after.as_deref(),
                    now,
                );
                let blocked = h.limits.blocked_until(PROFILE_CHUNK_CATEGORIES, now);
                if let Some(until) = blocked
                    && h.rl_reported_until.is_none_or(|r| r < now)
                {
                    h.rl_reported_until = Some(until);
                    msgs.push((
                        Level::Warn,
                        format!(
                            "Sentry rate limit: profile chunks paused for {:.0} s (they wait in the spool)",
                            (until - now).as_secs_f64()
                        ),
                    ));
                }
                match status {
                    200..=299 => {
                        if !h.spool.remove(&entry) {
                            // Evicted while in flight and counted as dropped: it was not lost.
                            bump(stats, |s| {
                                s.dropped_spool_full = s.dropped_spool_full.saturating_sub(1)
                            });
                        }
                        if h.failures > 0 {
                            msgs.push((Level::Info, "upload to Sentry works again".to_string()));
                        }
                        h.failures = 0;
                        h.backoff_until = None;
                        bump(stats, |s| {
                            s.chunks_accepted += 1;
                            s.samples_accepted += samples;
                        });
                        None
                    }
                    429 => {
                        bump(stats, |s| s.rate_limited_responses += 1);
                        // A 429 whose limits do not cover profile chunks: back off anyway.
                        blocked
                            .is_none()
                            .then(|| "HTTP 429 without a limit for profile chunks".to_string())
                    }
                    408 | 500..=599 => Some(format!("HTTP {status}")),
                    _ => {
                        h.spool.remove(&entry);
                        bump(stats, |s| s.dropped_rejected += 1);
                        if h.warned_status.insert(status) {
                            let body = body.trim();
                            msgs.push((
                                Level::Warn,
                                format!(
                                    "Sentry rejected chunk {id}: HTTP {status}{}{}; chunk dropped \
                                     (later HTTP {status} rejections are only counted)",
                                    if body.is_empty() { "" } else { " " },
                                    body
                                ),
                            ));
                        }
                        None
                    }
                }
            }
            Response::Failed(e) => Some(e),
        };
        if let Some(reason) = retry_reason {
            h.failures = h.failures.saturating_add(1);
            h.backoff_until = Some(now + h.backoff());
            if h.failures == 1 {
                msgs.push((
                    Level::Warn,
                    format!(
                        "upload to {} failed ({reason}); retrying with backoff, chunks wait in the spool",
                        h.url
                    ),
                ));
            }
            bump(stats, |s| s.retries += 1);
        }
        for (level, m) in msgs {
            report(level, &m);
        }
    }
}
