//! End-to-end upload tests of the uploader library against a real HTTP/1.1 server on
//! 127.0.0.1 (`common/sentry_server.rs`) that checks every request like Relay would (method,
//! path, auth, headers, gzip, envelope framing, chunk validity) and can be scripted to be
//! down, fail, hang, rate limit or reject.

#[path = "common/sentry_server.rs"]
mod sentry_server;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use profiler::sink::sentry::{Level, UploadConfig, UploadStats, Uploader, UploaderHandle};
use profiler_sentry::envelope::parse_envelope;
use profiler_sentry::validate::validate_item;
use profiler_sentry::{
    ChunkBuilder, ChunkMeta, Dsn, InAppRules, ProfileChunk, ResolvedFrame, new_profiler_id,
};
use sentry_server::{
    Action, KEY, PROJECT, ServerState, TestServer, closed_port, reply, reply_with, spool_files,
    wait_for,
};

// ---------------------------------------------------------------- helpers

type Reports = Arc<Mutex<Vec<(Level, String)>>>;

fn config(port: u16, spool: &Path, reports: &Reports) -> UploadConfig {
    let dsn: Dsn = format!("http://{KEY}@127.0.0.1:{port}/{PROJECT}")
        .parse()
        .unwrap();
    let mut cfg = UploadConfig::new(Some(dsn), None, spool.to_path_buf());
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(800);
    cfg.request_timeout = Duration::from_secs(3);
    cfg.flush_timeout = Duration::from_secs(10);
    let r = Arc::clone(reports);
    cfg.reporter = Arc::new(move |level, msg| {
        eprintln!("[{level:?}] {msg}");
        r.lock().unwrap().push((level, msg.to_string()));
    });
    cfg
}

fn reports() -> Reports {
    Arc::new(Mutex::new(Vec::new()))
}

/// No report shows the DSN key (or a long piece of it).
fn assert_key_hidden(reports: &Reports) {
    for (_, m) in reports.lock().unwrap().iter() {
        assert!(!m.contains(&KEY[..8]), "key leaked in report: {m}");
    }
}

/// A real chunk from the builder: one thread, `n` samples.
fn make_chunk(meta: &ChunkMeta, n: usize, t0: f64) -> ProfileChunk {
    let mut b = ChunkBuilder::new(meta, &InAppRules::default());
    let frames = [
        ResolvedFrame {
            instruction_addr: 0x5581_a3c0_1158,
            function: Some("compute".into()),
            module: Some("/usr/local/bin/demo".into()),
            ..Default::default()
        },
        ResolvedFrame {
            instruction_addr: 0x5581_a3c0_11a2,
            function: Some("main".into()),
            module: Some("/usr/local/bin/demo".into()),
            ..Default::default()
        },
    ];
    for i in 0..n {
        b.add_sample(4242, "demo", t0 + i as f64 * 0.01, &frames)
            .unwrap();
    }
    b.finish().unwrap()
}

fn meta() -> ChunkMeta {
    ChunkMeta {
        profiler_id: new_profiler_id(),
        release: Some("demo@1".into()),
        environment: None,
    }
}

fn send_chunks(tx: &Sender<ProfileChunk>, n: usize) -> Vec<String> {
    let m = meta();
    (0..n)
        .map(|i| {
            let c = make_chunk(&m, 5 + i, 1_763_724_000.0 + 60.0 * i as f64);
            let id = c.chunk_id().to_string();
            tx.send(c).unwrap();
            id
        })
        .collect()
}

fn assert_each_once(received: &[String], expected: &[String]) {
    assert_eq!(received, expected, "every chunk exactly once, oldest first");
}

// ---------------------------------------------------------------- scenarios

fn down_then_up(down_for: Duration, backoff_max: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let reps = reports();
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.backoff_max = backoff_max;
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    let mut ids = send_chunks(&tx, 3);
    wait_for("spooling", Duration::from_secs(5), || {
        up.stats().chunks_spooled == 3
    });
    assert_eq!(
        spool_files(tmp.path()).len(),
        3,
        "written to the spool before sending"
    );
    std::thread::sleep(down_for);
    let s = up.stats();
    assert!(s.requests >= 2 && s.retries >= 2, "{s:?}");
    assert_eq!(s.chunks_accepted, 0);

    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    ids.extend(send_chunks(&tx, 2));
    wait_for("all chunks", backoff_max + Duration::from_secs(10), || {
        state.accepted_ids().len() == 5
    });
    drop(tx);
    let stats = up.finish();
    state.assert_no_errors();
    assert_each_once(&state.accepted_ids(), &ids);
    assert_eq!(stats.chunks_accepted, 5);
    assert_eq!(stats.samples_accepted, (5 + 6 + 7 + 5 + 6) as u64);
    assert_eq!(stats.left_in_spool, 0);
    assert_eq!(
        stats.dropped_rejected + stats.dropped_spool_full + stats.dropped_io,
        0
    );
    assert!(
        spool_files(tmp.path()).is_empty(),
        "accepted chunks leave the spool"
    );
    let reps_v = reps.lock().unwrap().clone();
    let failures: Vec<_> = reps_v
        .iter()
        .filter(|(_, m)| m.contains("failed"))
        .collect();
    assert_eq!(
        failures.len(),
        1,
        "one warning per failure streak: {reps_v:?}"
    );
    assert!(reps_v.iter().any(|(_, m)| m.contains("works again")));
    assert_key_hidden(&reps);
}

/// Scenario 1: server down (port closed) for a few seconds, then up.
#[test]
fn server_down_then_up_every_chunk_once() {
    down_then_up(Duration::from_secs(3), Duration::from_millis(800));
}

/// Scenario 1, long form: two minutes down with the default 60 s backoff cap.
/// Not run by CI: `make test-long`.
#[test]
#[ignore = "takes about 3 minutes"]
fn server_down_two_minutes_then_up() {
    down_then_up(Duration::from_secs(120), Duration::from_secs(60));
}

/// Scenario 2: after a 429 with `Retry-After: 30`, nothing is sent for 30 s; then
/// everything arrives.
#[test]
fn retry_after_30_seconds_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    state.push(reply_with(429, &[("Retry-After", "30")], ""));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port, tmp.path(), &reps), rx).unwrap();
    let ids = send_chunks(&tx, 1);
    wait_for("429", Duration::from_secs(5), || {
        !state.received().is_empty()
    });
    let t429 = state.received()[0].at;
    let more = send_chunks(&tx, 2);
    // Nothing may arrive during the 30 s.
    while t429.elapsed() < Duration::from_millis(29_500) {
        assert_eq!(state.received().len(), 1, "request during the rate limit");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("chunks after the limit", Duration::from_secs(10), || {
        state.accepted_ids().len() == 3
    });
    let r = state.received();
    assert!(
        r[1].at.duration_since(t429) >= Duration::from_secs(30),
        "{:?}",
        r[1].at - t429
    );
    let stats = up.finish();
    state.assert_no_errors();
    let mut all = ids.clone();
    all.extend(more);
    assert_each_once(&state.accepted_ids(), &all);
    assert_eq!(stats.rate_limited_responses, 1);
    assert!(
        stats.rate_limited_time >= Duration::from_secs(29),
        "{stats:?}"
    );
    assert!(
        stats.rate_limited_time < Duration::from_secs(40),
        "{stats:?}"
    );
    assert!(
        reps.lock()
            .unwrap()
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("rate limit")),
        "rate limit reported"
    );
    assert_key_hidden(&reps);
}

/// `X-Sentry-Rate-Limits` on a 200 is honoured for profile categories only.
#[test]
fn rate_limit_header_pauses_only_matching_categories() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    // Limits that do not cover profile chunks: ignored.
    state.push(reply_with(
        200,
        &[(
            "X-Sentry-Rate-Limits",
            "100:transaction;error:organization, 100:made_up:project",
        )],
        "",
    ));
    // A limit on profile_duration (covers chunks) for 2 s; longer limits elsewhere.
    state.push(reply_with(
        200,
        &[(
            "X-Sentry-Rate-Limits",
            "2.5:profile_duration;foo:organization:usage_exceeded:ns:x, 300:span:key",
        )],
        "",
    ));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port, tmp.path(), &reps), rx).unwrap();
    let mut ids = send_chunks(&tx, 1);
    wait_for("first", Duration::from_secs(5), || {
        state.received().len() == 1
    });
    ids.extend(send_chunks(&tx, 1));
    wait_for("second", Duration::from_secs(5), || {
        state.received().len() == 2
    });
    let r = state.received();
    assert!(
        r[1].at - r[0].at < Duration::from_secs(2),
        "not paused by unrelated limits"
    );
    ids.extend(send_chunks(&tx, 1));
    wait_for("third", Duration::from_secs(8), || {
        state.received().len() == 3
    });
    let r = state.received();
    assert!(
        r[2].at - r[1].at >= Duration::from_millis(2500),
        "paused by profile_duration"
    );
    let stats = up.finish();
    state.assert_no_errors();
    assert_each_once(&state.accepted_ids(), &ids);
    assert_eq!(stats.rate_limited_responses, 0);
    assert!(
        stats.rate_limited_time >= Duration::from_secs(2),
        "{stats:?}"
    );
}

/// Scenario 3: the uploader stops abruptly (no flush) while the server is down; a new
/// uploader on the same spool sends everything, and a half-written file is not sent.
#[test]
fn abrupt_stop_then_next_run_sends_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port, tmp.path(), &reps), rx).unwrap();
    let ids = send_chunks(&tx, 3);
    wait_for("spooling", Duration::from_secs(5), || {
        up.stats().chunks_spooled == 3
    });
    let stats = up.abort();
    assert_eq!(stats.left_in_spool, 3);
    assert_eq!(spool_files(tmp.path()).len(), 3);
    // What a SIGKILL during a write leaves behind.
    let half = tmp.path().join("00000000000000000001-deadbeef.chunk.tmp");
    std::fs::write(&half, br#"{"version":"2","platf"#).unwrap();
    // A damaged spool file (oldest name): not a chunk this agent wrote, deleted unsent.
    let garbage = tmp.path().join("00000000000000000002-garbage.chunk");
    std::fs::write(&garbage, b"not a chunk").unwrap();

    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    let reps2 = reports();
    let (tx2, rx2) = crossbeam_channel::unbounded::<ProfileChunk>();
    let up2 = Uploader::spawn(config(port, tmp.path(), &reps2), rx2).unwrap();
    assert!(!half.exists(), "tmp file cleaned at start");
    wait_for("spool sent", Duration::from_secs(10), || {
        state.accepted_ids().len() == 3
    });
    drop(tx2);
    drop(tx);
    let stats2 = up2.finish();
    state.assert_no_errors();
    assert_each_once(&state.accepted_ids(), &ids);
    assert_eq!(stats2.chunks_from_earlier_runs, 3);
    assert_eq!(stats2.chunks_accepted, 3);
    assert_eq!(stats2.foreign_removed, 1);
    assert_eq!(stats2.dropped_io, 0);
    assert!(!garbage.exists());
    assert!(
        reps2
            .lock()
            .unwrap()
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("garbage")),
        "damaged file reported"
    );
    assert!(spool_files(tmp.path()).is_empty());
    assert_key_hidden(&reps);
    assert_key_hidden(&reps2);
}

/// Issue 13: the spool is keyed by destination. Chunks spooled for one project (server A,
/// down) are not sent by a run for another (server B): that run sends only its own, keeps
/// A's (and says so), and the next run for A sends them.
#[test]
fn spool_sends_each_chunk_only_to_its_own_project() {
    let tmp = tempfile::tempdir().unwrap();
    let port_a = closed_port();
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port_a, tmp.path(), &reps), rx).unwrap();
    let ids_a = send_chunks(&tx, 3);
    wait_for("spooling", Duration::from_secs(5), || {
        up.stats().chunks_spooled == 3
    });
    up.abort();
    drop(tx);

    let state_a = Arc::new(ServerState::default());
    let (_server_a, _) = TestServer::start(port_a, Arc::clone(&state_a));
    let state_b = Arc::new(ServerState::default());
    let (_server_b, port_b) = TestServer::start(0, Arc::clone(&state_b));
    let reps_b = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port_b, tmp.path(), &reps_b), rx).unwrap();
    let ids_b = send_chunks(&tx, 2);
    drop(tx);
    let stats = up.finish();
    state_b.assert_no_errors();
    assert_each_once(&state_b.accepted_ids(), &ids_b);
    assert!(
        state_a.received().is_empty(),
        "nothing sent to A by B's run"
    );
    assert_eq!(stats.chunks_from_earlier_runs, 0);
    assert_eq!(stats.kept_for_others, 3);
    assert!(
        stats
            .to_string()
            .contains("3 for other projects kept in the spool"),
        "{stats}"
    );
    let dest_a = format!("127.0.0.1:{port_a}/{PROJECT}");
    assert!(
        reps_b
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains(&format!(
                "3 chunk(s) in the spool are for another Sentry project ({dest_a})"
            ))),
        "{:?}",
        reps_b.lock().unwrap()
    );
    assert_eq!(spool_files(tmp.path()).len(), 3);

    let reps_a = reports();
    let (tx, rx) = crossbeam_channel::unbounded::<ProfileChunk>();
    let up = Uploader::spawn(config(port_a, tmp.path(), &reps_a), rx).unwrap();
    drop(tx);
    let stats = up.finish();
    state_a.assert_no_errors();
    assert_each_once(&state_a.accepted_ids(), &ids_a);
    assert_eq!(stats.chunks_from_earlier_runs, 3);
    assert_eq!(stats.kept_for_others, 0);
    assert_eq!(state_b.accepted_ids().len(), 2, "B got nothing more");
    assert!(spool_files(tmp.path()).is_empty());
    for r in [&reps, &reps_b, &reps_a] {
        assert_key_hidden(r);
    }
}

/// Issue 13: a file in the spool that this agent did not write is deleted with a warning
/// and never sent, even when its content is a perfect chunk: one owned by another user,
/// and a symbolic link to a chunk elsewhere.
#[test]
fn spool_files_the_agent_did_not_write_are_never_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let port = closed_port();
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(config(port, &spool, &reps), rx).unwrap();
    let ids = send_chunks(&tx, 3);
    wait_for("spooling", Duration::from_secs(5), || {
        up.stats().chunks_spooled == 3
    });
    up.abort();
    drop(tx);
    let files = spool_files(&spool);
    // A chunk moved out of the spool and linked back under a new (older) name.
    let outside = tmp.path().join("outside.chunk");
    std::fs::rename(&files[0], &outside).unwrap();
    let link = spool.join("00000000000000000001-linked.chunk");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let mut expect_sent = ids[1..].to_vec();
    let root = nix::unistd::geteuid().is_root();
    if root {
        // Another user's file (as if planted by them): a perfect chunk, not the agent's.
        std::os::unix::fs::chown(&files[1], Some(65534), Some(65534)).unwrap();
        expect_sent.remove(0);
    }

    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    let reps2 = reports();
    let (tx, rx) = crossbeam_channel::unbounded::<ProfileChunk>();
    let up = Uploader::spawn(config(port, &spool, &reps2), rx).unwrap();
    drop(tx);
    let stats = up.finish();
    state.assert_no_errors();
    assert_each_once(&state.accepted_ids(), &expect_sent);
    let warned = |needle: &str| {
        reps2.lock().unwrap().iter().any(|(l, m)| {
            *l == Level::Warn && m.contains("is not a chunk this agent wrote") && m.contains(needle)
        })
    };
    assert!(warned("symbolic link"), "{:?}", reps2.lock().unwrap());
    assert!(
        !link.exists() && outside.exists(),
        "the link removed, not its target"
    );
    if root {
        assert!(warned("owned by uid 65534"), "{:?}", reps2.lock().unwrap());
        assert!(!files[1].exists());
    }
    assert_eq!(stats.foreign_removed, if root { 2 } else { 1 });
    assert!(spool_files(&spool).is_empty());
}

/// Scenario 3 with a real SIGKILL: a child process produces chunks into the spool
/// continuously (server down) and is killed at an arbitrary moment; every file it left is a
/// complete chunk that the next run sends.
#[test]
fn sigkill_during_spooling_leaves_only_complete_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let ids_file = tmp.path().join("ids");
    let port = closed_port();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigkill_child", "--ignored", "--nocapture"])
        .env("SENTRY_CHILD_SPOOL", &spool)
        .env("SENTRY_CHILD_IDS", &ids_file)
        .env("SENTRY_CHILD_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("child spooled", Duration::from_secs(20), || {
        ids_file.exists()
    });
    std::thread::sleep(Duration::from_millis(50 + fastrand::u64(0..200)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let confirmed: Vec<String> = std::fs::read_to_string(&ids_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(confirmed.len(), 3);
    let files = spool_files(&spool);
    assert!(files.len() >= 3, "{files:?}");

    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    let reps = reports();
    let (tx, rx) = crossbeam_channel::unbounded::<ProfileChunk>();
    let up = Uploader::spawn(config(port, &spool, &reps), rx).unwrap();
    wait_for("spool sent", Duration::from_secs(20), || {
        state.accepted_ids().len() == files.len()
    });
    drop(tx);
    let stats = up.finish();
    state.assert_no_errors();
    assert_eq!(stats.dropped_io, 0, "no half-written chunk was picked up");
    let got = state.accepted_ids();
    assert_eq!(&got[..3], &confirmed[..], "oldest first");
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "each once");
    assert!(spool_files(&spool).is_empty());
    assert!(
        std::fs::read_dir(&spool).unwrap().all(|e| !e
            .unwrap()
            .path()
            .to_string_lossy()
            .ends_with(".tmp")),
        "tmp files cleaned"
    );
}

/// Child half of the SIGKILL test (runs only when started by it).
#[test]
#[ignore = "helper process for sigkill_during_spooling_leaves_only_complete_chunks"]
fn sigkill_child() {
    let (Ok(spool), Ok(ids), Ok(port)) = (
        std::env::var("SENTRY_CHILD_SPOOL"),
        std::env::var("SENTRY_CHILD_IDS"),
        std::env::var("SENTRY_CHILD_PORT"),
    ) else {
        panic!("run by sigkill_during_spooling_leaves_only_complete_chunks only");
    };
    let reps = reports();
    let cfg = config(port.parse().unwrap(), Path::new(&spool), &reps);
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    let first = send_chunks(&tx, 3);
    wait_for("spooling", Duration::from_secs(10), || {
        up.stats().chunks_spooled == 3
    });
    profiler::sink::sentry::spool::write_atomic(
        Path::new(&ids),
        first.join("\n").as_bytes(),
        0o600,
    )
    .unwrap();
    // Keep producing big chunks until killed.
    let m = meta();
    let mut i = 0.0;
    loop {
        tx.send(make_chunk(&m, 1000, 1_763_800_000.0 + i)).unwrap();
        i += 61.0;
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Scenario 4: a full spool drops the oldest chunks first and counts and reports them.
#[test]
fn full_spool_drops_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let reps = reports();
    let m = meta();
    let chunks: Vec<ProfileChunk> = (0..5)
        .map(|i| make_chunk(&m, 20, 1_763_724_000.0 + 60.0 * i as f64))
        .collect();
    let size = chunks[0].to_json().len() as u64;
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.spool_max_bytes = size * 2 + size / 2; // room for two
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    let ids: Vec<String> = chunks.iter().map(|c| c.chunk_id().to_string()).collect();
    for c in chunks {
        tx.send(c).unwrap();
    }
    wait_for("spooling", Duration::from_secs(5), || {
        let s = up.stats();
        s.chunks_spooled + s.dropped_spool_full == 5 + 3
    });
    let s = up.stats();
    assert_eq!(s.dropped_spool_full, 3, "{s:?}");
    assert_eq!(spool_files(tmp.path()).len(), 2);
    {
        let r = reps.lock().unwrap();
        let drops: Vec<&String> = r
            .iter()
            .filter(|(l, m)| *l == Level::Warn && m.contains("spool full"))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(drops.len(), 3);
        for (msg, id) in drops.iter().zip(&ids[..3]) {
            assert!(msg.contains(id.as_str()), "{msg} should name {id}");
        }
    }
    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    wait_for("remaining sent", Duration::from_secs(10), || {
        state.accepted_ids().len() == 2
    });
    drop(tx);
    let stats = up.finish();
    state.assert_no_errors();
    assert_each_once(&state.accepted_ids(), &ids[3..]);
    assert_eq!(stats.dropped_spool_full, 3);
    assert!(stats.to_string().contains("3 spool full"), "{stats}");
}

/// Scenario 5: a 400 drops that chunk (counted, reported once per status); 503, a hung
/// request (timeout) and a 500 are retried.
#[test]
fn rejections_dropped_and_server_errors_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    // The body echoes the key: the report must not.
    state.push(reply_with(
        400,
        &[],
        &format!(r#"{{"detail":"bad envelope for key {KEY}"}}"#),
    ));
    state.push(reply(503));
    state.push(Action::Hang(Duration::from_secs(5)));
    state.push(reply(500));
    state.push(reply(200));
    state.push(reply(400));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let reps = reports();
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.request_timeout = Duration::from_secs(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    let ids = send_chunks(&tx, 3);
    wait_for("all answered", Duration::from_secs(20), || {
        state.received().len() == 6 && up.stats().chunks_received == 3 && {
            let s = up.stats();
            s.chunks_accepted + s.dropped_rejected == 3
        }
    });
    let stats = up.finish();
    state.assert_no_errors();
    let r = state.received();
    let per_id: Vec<&str> = r.iter().map(|x| x.chunk_id.as_str()).collect();
    assert_eq!(
        per_id,
        [&ids[0], &ids[1], &ids[1], &ids[1], &ids[1], &ids[2]].map(String::as_str)
    );
    assert_eq!(state.accepted_ids(), [ids[1].clone()]);
    assert_eq!(r[4].samples, 6);
    assert_eq!(stats.dropped_rejected, 2);
    assert_eq!(stats.chunks_accepted, 1);
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.requests, 6);
    let reps_v = reps.lock().unwrap().clone();
    let rejected: Vec<_> = reps_v
        .iter()
        .filter(|(_, m)| m.contains("HTTP 400"))
        .collect();
    assert_eq!(rejected.len(), 1, "reported once: {reps_v:?}");
    assert!(rejected[0].1.contains(&ids[0]));
    assert!(
        rejected[0].1.contains("e3b0…"),
        "key masked: {}",
        rejected[0].1
    );
    assert_key_hidden(&reps);
    assert!(spool_files(tmp.path()).is_empty());
}

/// The flush gives up after its timeout; what is left stays in the spool.
#[test]
fn finish_stops_after_flush_timeout_and_keeps_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let reps = reports();
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.flush_timeout = Duration::from_millis(1500);
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    send_chunks(&tx, 2);
    let t = Instant::now();
    let stats = up.finish(); // tx still open: finish must not wait for it
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "kept trying: {took:?}");
    assert!(took < Duration::from_secs(5), "gave up in time: {took:?}");
    assert_eq!(
        stats.chunks_received, 2,
        "finish takes what is in the channel"
    );
    assert_eq!(stats.left_in_spool, 2);
    assert!(stats.retries >= 1);
    assert_eq!(spool_files(tmp.path()).len(), 2);
    assert!(stats.to_string().contains("2 left in the spool"), "{stats}");
    assert_key_hidden(&reps);
    drop(tx);
}

/// A hung request neither delays spooling of new chunks nor stretches the flush beyond its
/// timeout.
#[test]
fn hung_request_does_not_block_spooling_or_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    state.push(Action::Hang(Duration::from_secs(20)));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let reps = reports();
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.request_timeout = Duration::from_secs(30);
    cfg.flush_timeout = Duration::from_secs(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    send_chunks(&tx, 1);
    wait_for("request hangs", Duration::from_secs(5), || {
        state.received().len() == 1
    });
    send_chunks(&tx, 2);
    wait_for("spooled during the request", Duration::from_secs(2), || {
        up.stats().chunks_spooled == 3
    });
    let t = Instant::now();
    let stats = up.finish();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "flush bounded: {:?}",
        t.elapsed()
    );
    assert_eq!(stats.left_in_spool, 3);
    assert_eq!(spool_files(tmp.path()).len(), 3);
    drop(tx);
}

/// Scenario 6: the key never appears in reports, errors, Debug or Display output.
#[test]
fn key_never_shown() {
    let dsn: Dsn = format!("https://{KEY}:{KEY}@o1.ingest.sentry.io/{PROJECT}")
        .parse()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = UploadConfig::new(Some(dsn.clone()), None, tmp.path().join("spool"));
    for text in [format!("{dsn}"), format!("{dsn:?}"), format!("{cfg:?}")] {
        assert!(!text.contains(&KEY[..8]), "{text}");
    }
    // A spool path that cannot be created: the error names the path only.
    let file = tmp.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    let mut cfg = UploadConfig::new(Some(dsn), None, file.join("sub"));
    cfg.reporter = Arc::new(|_, _| {});
    let (_tx, rx) = crossbeam_channel::unbounded::<ProfileChunk>();
    let err = Uploader::spawn(cfg, rx)
        .err()
        .expect("bad spool dir refused")
        .to_string();
    assert!(err.contains("spool"), "{err}");
    assert!(!err.contains(&KEY[..8]), "{err}");
}

/// Without a DSN: a directory gets `<chunk_id>.envelope` files; a `*.envelope` name gets
/// that name, then `<stem>.2.envelope`, … Each file is exactly one valid envelope.
#[test]
fn files_without_dsn() {
    let tmp = tempfile::tempdir().unwrap();
    let check_file = |p: &Path| -> String {
        let bytes = std::fs::read(p).unwrap();
        let env = parse_envelope(&bytes).unwrap();
        assert_eq!(env.items.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&env.items[0].payload).unwrap();
        validate_item(&v, env.items[0].header["platform"].as_str()).unwrap();
        v["chunk_id"].as_str().unwrap().to_string()
    };
    let run = |out: PathBuf, n: usize| -> (Vec<String>, UploadStats) {
        let mut cfg = UploadConfig::new(None, Some(out), tmp.path().join("unused-spool"));
        cfg.reporter = Arc::new(|l, m| panic!("unexpected report {l:?} {m}"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let up: UploaderHandle = Uploader::spawn(cfg, rx).unwrap();
        let ids = send_chunks(&tx, n);
        drop(tx);
        (ids, up.finish())
    };
    // The agent creates the envelope directory, not its parents.
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    std::fs::create_dir(tmp.path().join("one")).unwrap();
    let dir = tmp.path().join("out/chunks");
    let (ids, stats) = run(dir.clone(), 3);
    assert_eq!(stats.chunks_written, 3);
    assert_eq!(stats.samples_written, 5 + 6 + 7);
    for id in &ids {
        assert_eq!(check_file(&dir.join(format!("{id}.envelope"))), *id);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    assert!(
        !tmp.path().join("unused-spool").exists(),
        "no spool without a DSN"
    );

    let single = tmp.path().join("one/profile.envelope");
    let (ids, stats) = run(single.clone(), 3);
    assert_eq!(stats.chunks_written, 3);
    assert_eq!(check_file(&single), ids[0]);
    assert_eq!(
        check_file(&tmp.path().join("one/profile.2.envelope")),
        ids[1]
    );
    assert_eq!(
        check_file(&tmp.path().join("one/profile.3.envelope")),
        ids[2]
    );

    let mut cfg = UploadConfig::new(None, None, tmp.path().join("s"));
    cfg.reporter = Arc::new(|_, _| {});
    let (_tx, rx) = crossbeam_channel::unbounded::<ProfileChunk>();
    assert!(Uploader::spawn(cfg, rx).is_err());
}

/// An https DSN really speaks TLS (rustls is compiled in): the server sees a TLS
/// ClientHello; the failed handshake is retried like any connection failure.
#[test]
fn https_dsn_uses_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = [0u8; 3];
        s.read_exact(&mut head).unwrap();
        head
    });
    let tmp = tempfile::tempdir().unwrap();
    let reps = reports();
    let mut cfg = config(port, tmp.path(), &reps);
    cfg.dsn = Some(
        format!("https://{KEY}@127.0.0.1:{port}/{PROJECT}")
            .parse()
            .unwrap(),
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    send_chunks(&tx, 1);
    let head = seen.join().unwrap();
    assert_eq!(head[0], 0x16, "TLS handshake record");
    assert_eq!(head[1], 0x03, "TLS version major");
    wait_for("retry scheduled", Duration::from_secs(10), || {
        up.stats().retries >= 1
    });
    let stats = up.abort();
    assert_eq!(stats.left_in_spool, 1);
    assert_key_hidden(&reps);
}

/// Sends one real chunk to the Sentry project in `SENTRY_TEST_DSN` (https, TLS through
/// rustls) and expects it accepted. Not run by CI: `SENTRY_TEST_DSN=... make test-long`.
#[test]
#[ignore = "needs SENTRY_TEST_DSN and network"]
fn real_sentry_accepts_a_chunk() {
    let dsn: Dsn = std::env::var("SENTRY_TEST_DSN")
        .expect("SENTRY_TEST_DSN")
        .parse()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = UploadConfig::new(Some(dsn), None, tmp.path().to_path_buf());
    cfg.flush_timeout = Duration::from_secs(30);
    let (tx, rx) = crossbeam_channel::unbounded();
    let up = Uploader::spawn(cfg, rx).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tx.send(make_chunk(&meta(), 50, now - 1.0)).unwrap();
    drop(tx);
    let stats = up.finish();
    assert_eq!(stats.chunks_accepted, 1, "{stats:?}");
}
