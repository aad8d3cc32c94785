//! End-to-end tests of the Sentry side of `profiler attach` with the real binary against
//! the fixtures (`make fixtures`): the chunks of a real session checked rule by rule (Relay's
//! rules through the validator, ids, threads, timestamps, frames, in_app, debug images
//! against `readelf` and `/proc/PID/maps`), and the upload behaviour against the scripted
//! test server (`common/sentry_server.rs`): outage and recovery, `Retry-After`, a SIGKILLed
//! agent's spool sent by the next run, a full spool, and the DSN key never shown.
//!
//! `three_minute_session_to_server` is the one long test (about 3 minutes, 100 Hz, 60 s
//! chunks, as a deployment would run); the others take seconds, except the `Retry-After`
//! one (30 s by definition). `server_down_two_minutes_then_up` is `#[ignore]`d.

mod common;
#[path = "common/sentry_server.rs"]
mod sentry_server;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Fixture, fixture_path, tracer_pid};
use profiler_sentry::envelope::parse_envelope;
use profiler_sentry::validate::validate_item;
use sentry_server::{
    KEY, ServerState, TestServer, closed_port, dsn_for, reply_with, spool_chunk_id, spool_files,
    wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------- running the agent

/// A running `profiler` whose stderr is collected line by line (and echoed to the test's
/// stderr, prefixed, for failure diagnosis).
struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    started: SystemTime,
}

impl Agent {
    fn spawn(args: &[String], env: &[(&str, &str)]) -> Agent {
        let mut cmd = common::ptrace_agent();
        cmd.args(args)
            .env_remove("SENTRY_DSN")
            .env_remove("SENTRY_RELEASE")
            .env_remove("SENTRY_ENVIRONMENT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = SystemTime::now();
        let mut child = cmd.spawn().expect("start the profiler");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        let pid = child.id();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[agent {pid}] {line}");
                l2.lock().unwrap().push(line);
            }
        });
        Agent {
            child,
            lines,
            reader: Some(reader),
            started,
        }
    }

    /// stderr so far.
    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Wait for the exit (panic after `timeout`); returns the status and all of stderr.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("profiler did not finish in {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.stderr())
    }

    /// SIGKILL and reap.
    fn kill9(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.stderr()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `attach --pid P -F hz [--duration secs] --chunk-seconds c` plus `extra`.
fn attach_args(pid: i32, hz: u32, secs: Option<f64>, chunk: f64, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["attach", "--pid"]);
    a.push(pid.to_string());
    a.extend(args(&["--frequency", &hz.to_string()]));
    if let Some(s) = secs {
        a.extend(args(&["--duration", &s.to_string()]));
    }
    a.extend(args(&["--chunk-seconds", &chunk.to_string()]));
    a.extend(args(extra));
    a
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------- the closing summary

/// `  sentry: profiler_id <id>; <N> chunks with <M> samples (<L> samples ... left out ...)`.
#[derive(Debug)]
struct ChunkLine {
    profiler_id: String,
    chunks: u64,
    samples: u64,
    left_out: u64,
}

fn chunk_line(stderr: &str) -> ChunkLine {
    let line = stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("sentry: profiler_id "))
        .unwrap_or_else(|| panic!("no `sentry: profiler_id` line in:\n{stderr}"));
    let (id, rest) = line.split_once("; ").unwrap();
    let w: Vec<&str> = rest.split_whitespace().collect();
    assert_eq!((w[1], w[2], w[4]), ("chunks", "with", "samples"), "{line}");
    ChunkLine {
        profiler_id: id.to_string(),
        chunks: w[0].parse().unwrap(),
        samples: w[3].parse().unwrap(),
        left_out: w[5].trim_start_matches('(').parse().unwrap(),
    }
}

/// The `UploadStats` line: the `sentry:` line after the profiler_id one.
fn stats_line(stderr: &str) -> String {
    let mut it = stderr
        .lines()
        .map(str::trim_start)
        .skip_while(|l| !l.starts_with("sentry: profiler_id "));
    it.next();
    it.next()
        .and_then(|l| l.strip_prefix("sentry: "))
        .unwrap_or_else(|| panic!("no upload stats line in:\n{stderr}"))
        .to_string()
}

/// The number before `word` in `text` (`"3 chunks accepted"`, `"number_before(.., " chunks accepted")"`).
fn number_before(text: &str, word: &str) -> Option<u64> {
    let at = text.find(word)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

/// `samples: X in T threads` of the summary.
fn total_samples(stderr: &str) -> u64 {
    let l = stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("samples: "))
        .expect("samples line");
    l.split_whitespace().next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------- chunk checks

/// What the chunks of a run must agree with.
struct RunFacts {
    exe: String,
    profiler_id: String,
    /// Wall clock just before the agent started and just after it ended.
    t0: f64,
    t1: f64,
    /// Threads alive at the start and at the end (tid -> name from /proc).
    long_lived: BTreeMap<i32, String>,
    alive_at_end: BTreeMap<i32, String>,
    /// Allowed names of threads that were not alive at the end.
    transient_names: &'static [&'static str],
    release: Option<&'static str>,
    environment: Option<&'static str>,
    chunk_seconds: f64,
}

fn hex_addr(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("address {v} not a string"));
    let h = s
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("address {s} not 0x-prefixed"));
    u64::from_str_radix(h, 16).unwrap()
}

fn is_mangled(f: &str) -> bool {
    f.starts_with("_Z") || f.starts_with("_R") || f.starts_with("__Z")
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Every rule of issue 3 on the chunks of one run. Returns the samples in all chunks.
fn check_chunks(chunks: &[(Value, Option<String>)], f: &RunFacts) -> u64 {
    assert!(!chunks.is_empty(), "no chunks");
    let mut ids = HashSet::new();
    let mut total = 0u64;
    let mut order: Vec<(f64, f64)> = Vec::new();
    let (mut app_frames, mut system_frames) = (0, 0);
    for (c, item_platform) in chunks {
        validate_item(c, item_platform.as_deref()).unwrap_or_else(|e| panic!("Relay: {e}"));
        let chunk_id = c["chunk_id"].as_str().unwrap();
        assert!(
            chunk_id.len() == 32 && chunk_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{chunk_id}"
        );
        assert!(
            ids.insert(chunk_id.to_string()),
            "duplicate chunk_id {chunk_id}"
        );
        assert_eq!(c["profiler_id"], f.profiler_id.as_str());
        assert_eq!(c["platform"], "rust");
        assert_eq!(item_platform.as_deref(), Some("rust"));
        assert_eq!(c["version"], "2");
        assert_eq!(c["client_sdk"]["name"], "profiler");
        assert_eq!(c["release"].as_str(), f.release);
        assert_eq!(c["environment"].as_str(), f.environment);

        let p = &c["profile"];
        let samples = p["samples"].as_array().unwrap();
        let stacks = p["stacks"].as_array().unwrap();
        let frames = p["frames"].as_array().unwrap();
        let meta = p["thread_metadata"].as_object().unwrap();
        total += samples.len() as u64;

        // Timestamps: numbers inside the run, sorted.
        let ts: Vec<f64> = samples
            .iter()
            .map(|s| s["timestamp"].as_f64().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "samples not sorted");
        let (first, last) = (ts[0], *ts.last().unwrap());
        assert!(
            first >= f.t0 && last <= f.t1,
            "timestamps {first}..{last} outside the run {}..{}",
            f.t0,
            f.t1
        );
        let span = last - first;
        assert!(span <= 66.0, "span {span} s");
        assert!(
            span <= f.chunk_seconds + 1.0,
            "span {span} s for {} s chunks",
            f.chunk_seconds
        );
        order.push((first, last));

        // Threads: kernel tids as decimal strings, named as /proc names them.
        let mut per_thread: HashMap<&str, usize> = HashMap::new();
        for s in samples {
            let tid = s["thread_id"].as_str().expect("thread_id is a string");
            let n: i32 = tid.parse().unwrap_or_else(|_| panic!("thread_id {tid}"));
            assert_eq!(n.to_string(), tid, "canonical decimal");
            assert!(n > 0, "tid {n}");
            *per_thread.entry(tid).or_default() += 1;
        }
        let meta_keys: BTreeSet<&str> = meta.keys().map(String::as_str).collect();
        let sample_tids: BTreeSet<&str> = per_thread.keys().copied().collect();
        assert_eq!(meta_keys, sample_tids, "thread_metadata = sampled threads");
        for (tid, m) in meta {
            let name = m["name"].as_str().unwrap_or("");
            let tid_n: i32 = tid.parse().unwrap();
            match (f.long_lived.get(&tid_n), f.alive_at_end.get(&tid_n)) {
                (Some(start_name), end_name) => {
                    assert_eq!(name, start_name, "name of {tid}");
                    if let Some(end_name) = end_name {
                        assert_eq!(name, end_name, "name of {tid}");
                    }
                }
                // A thread that came later: named as /proc names it now, or (gone, or
                // renamed since) one of the names such threads have.
                (None, end_name) => assert!(
                    end_name.is_some_and(|n| n == name) || f.transient_names.contains(&name),
                    "thread {tid} ({name:?}): /proc says {end_name:?}, expected one of {:?}",
                    f.transient_names
                ),
            }
        }
        if span >= 1.0 {
            for (tid, name) in &f.long_lived {
                let t = tid.to_string();
                assert!(
                    per_thread.get(t.as_str()).is_some_and(|&n| n >= 2),
                    "long-lived thread {tid} ({name}) missing in a {span:.1} s chunk"
                );
                assert_eq!(meta[&t]["name"], name.as_str());
            }
        }

        // Images: the ones some frame uses, each once.
        let images = c["debug_meta"]["images"].as_array().unwrap();
        let mut used_images = vec![false; images.len()];
        for im in images {
            assert_eq!(im["type"], "symbolic");
        }

        // Frames: an address on every one, demangled names, in_app by module.
        for fr in frames {
            let addr = hex_addr(&fr["instruction_addr"]);
            if let Some(func) = fr["function"].as_str() {
                assert!(!is_mangled(func), "mangled name {func}");
                assert!(!func.is_empty());
            }
            let in_app = fr["in_app"].as_bool().expect("in_app set on every frame");
            match fr["package"].as_str() {
                Some(pkg) => {
                    let (i, _) = images
                        .iter()
                        .enumerate()
                        .find(|(_, im)| {
                            im["code_file"] == pkg && {
                                let a = hex_addr(&im["image_addr"]);
                                addr >= a && addr - a < im["image_size"].as_u64().unwrap()
                            }
                        })
                        .unwrap_or_else(|| panic!("frame {fr} is in no image of {pkg}"));
                    used_images[i] = true;
                    if pkg == f.exe {
                        // Standard library code inlined or instantiated into the fixture
                        // is not app code; the fixture's own functions are, also when
                        // their demangled name starts with a return type from std
                        // (`std::enable_if<…>::type app::exchange_values<double>(…)`,
                        // as c++filt prints it).
                        let func = fr["function"].as_str().unwrap_or("");
                        let file = fr["filename"].as_str().unwrap_or("");
                        let own_source = file.contains("/fixtures/src/");
                        let std_code = (!own_source && common::std_library_name(func))
                            || file.starts_with("/rustc/")
                            || file.starts_with("/usr/include/");
                        if std_code {
                            assert!(!in_app, "standard library frame in_app: {fr}");
                        } else if func.starts_with("app::")
                            || func.starts_with("rust_app::")
                            || func == "main"
                        {
                            assert!(in_app, "fixture frame not in_app: {fr}");
                            app_frames += 1;
                        }
                    } else if ["libc.so", "libstdc++.so", "libm.so", "libgcc_s.so"]
                        .iter()
                        .any(|l| basename(pkg).starts_with(l))
                        || pkg == "[vdso]"
                    {
                        assert!(!in_app, "system frame in_app: {fr}");
                        system_frames += 1;
                    }
                }
                None => assert!(!in_app, "frame without module in_app: {fr}"),
            }
        }
        assert!(
            used_images.iter().all(|&u| u),
            "every image is used by a frame"
        );
        for st in stacks {
            assert!(
                st.as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i.as_u64().unwrap() < frames.len() as u64)
            );
        }
    }
    assert!(app_frames > 0, "no frames of {}", f.exe);
    assert!(system_frames > 0, "no libc/libstdc++ frames");
    // Windows follow one another without overlap; all but the last are full.
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in order.windows(2) {
        assert!(w[0].1 <= w[1].0, "chunks overlap: {w:?}");
        let span = w[0].1 - w[0].0;
        assert!(
            span >= 0.9 * f.chunk_seconds,
            "a {span:.2} s chunk before the last, for {} s windows",
            f.chunk_seconds
        );
    }
    total
}

/// Names of all functions in the chunks, and for one thread the share of samples whose
/// stack contains `function`.
fn functions(chunks: &[(Value, Option<String>)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (c, _) in chunks {
        for fr in c["profile"]["frames"].as_array().unwrap() {
            if let Some(f) = fr["function"].as_str() {
                out.insert(f.to_string());
            }
        }
    }
    out
}

fn share_with_function(chunks: &[(Value, Option<String>)], tid: i32, function: &str) -> f64 {
    let (mut hit, mut all) = (0u64, 0u64);
    let tid = tid.to_string();
    for (c, _) in chunks {
        let p = &c["profile"];
        let frames = p["frames"].as_array().unwrap();
        let stacks = p["stacks"].as_array().unwrap();
        for s in p["samples"].as_array().unwrap() {
            if s["thread_id"] != tid.as_str() {
                continue;
            }
            all += 1;
            let st = stacks[s["stack_id"].as_u64().unwrap() as usize]
                .as_array()
                .unwrap();
            if st
                .iter()
                .any(|i| frames[i.as_u64().unwrap() as usize]["function"] == function)
            {
                hit += 1;
            }
        }
    }
    assert!(all > 0, "no samples of thread {tid}");
    hit as f64 / all as f64
}

/// The chunks of a directory of envelope files (one chunk each).
fn read_envelope_dir(dir: &Path) -> Vec<(Value, Option<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(p.extension().unwrap(), "envelope", "{}", p.display());
        let bytes = std::fs::read(&p).unwrap();
        let env = parse_envelope(&bytes).unwrap();
        assert_eq!(env.items.len(), 1, "one chunk per envelope");
        let item = &env.items[0];
        assert_eq!(item.header["type"], "profile_chunk");
        assert_eq!(item.header["length"], item.payload.len() as u64);
        let v: Value = serde_json::from_slice(&item.payload).unwrap();
        assert_eq!(
            p.file_stem().unwrap().to_str().unwrap(),
            v["chunk_id"].as_str().unwrap(),
            "file named after its chunk"
        );
        out.push((v, item.header["platform"].as_str().map(str::to_string)));
    }
    out
}

fn thread_map(fx: &Fixture) -> BTreeMap<i32, String> {
    fx.threads().into_iter().collect()
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A session against `cpp_app`, checked end to end. `sink` is either the DSN of a running
/// test server or an envelope directory.
fn cpp_app_session(
    secs: f64,
    chunk: f64,
    server: Option<(&ServerState, u16)>,
    sampler: Option<&str>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::spawn("cpp_app", &[]);
    // The named long-lived threads: one per name (the churner may already have started a
    // thread, which carries the name `churner` for its first microseconds, then
    // `short-lived`; the long-lived churner was created before `ready`, so its tid is lower).
    let mut first_by_name: BTreeMap<String, i32> = BTreeMap::new();
    for (tid, name) in fx.threads() {
        if name != "short-lived" {
            first_by_name.entry(name).or_insert(tid);
        }
    }
    let long_lived: BTreeMap<i32, String> =
        first_by_name.into_iter().map(|(n, t)| (t, n)).collect();
    assert_eq!(long_lived.len(), 9, "{long_lived:?}");
    let id_file = tmp.path().join("profiler-id");
    let out_dir = tmp.path().join("chunks");
    let spool = tmp.path().join("spool");
    let (dsn, out);
    let mut extra = vec![
        "--profiler-id-file",
        id_file.to_str().unwrap(),
        "--spool-dir",
        spool.to_str().unwrap(),
        "--release",
        "cpp_app@1.2.3",
        "--environment",
        "ci",
    ];
    if let Some(sampler) = sampler {
        extra.extend(["--sampler", sampler]);
    }
    match server {
        Some((_, port)) => {
            dsn = dsn_for(port);
            extra.extend(["--dsn", dsn.as_str()]);
        }
        None => {
            out = format!("{}/", out_dir.display());
            extra.extend(["--output", out.as_str()]);
        }
    }
    let agent = Agent::spawn(&attach_args(fx.pid(), 100, Some(secs), chunk, &extra), &[]);
    let t0 = unix(agent.started);
    let (status, stderr) = agent.wait(Duration::from_secs_f64(secs + 120.0));
    let t1 = unix(SystemTime::now());
    assert!(status.success(), "{stderr}");
    let alive_at_end = thread_map(&fx);
    match sampler {
        Some("perf") => assert!(stderr.contains("  sampler: perf_event_open"), "{stderr}"),
        Some(_) => assert!(stderr.contains("  sampler: ptrace"), "{stderr}"),
        None => {}
    }

    let line = chunk_line(&stderr);
    let from_file = std::fs::read_to_string(&id_file).unwrap();
    assert_eq!(from_file.trim_end(), line.profiler_id, "--profiler-id-file");
    assert!(
        stderr.contains(&format!("profiler: profiler_id {}", line.profiler_id)),
        "printed at start"
    );
    let chunks: Vec<(Value, Option<String>)> = match server {
        Some((state, _)) => {
            state.assert_no_errors();
            let got = state.received();
            assert!(got.iter().all(|r| r.status == Some(200)));
            got.iter()
                .map(|r| ((*r.payload).clone(), r.item_platform.clone()))
                .collect()
        }
        None => read_envelope_dir(&out_dir),
    };
    let expected_chunks = (secs / chunk).floor() as u64;
    assert!(
        line.chunks >= expected_chunks && line.chunks <= expected_chunks + 1,
        "{} chunks for {secs} s in {chunk} s windows",
        line.chunks
    );
    assert_eq!(
        chunks.len() as u64,
        line.chunks,
        "every chunk delivered once"
    );
    let facts = RunFacts {
        exe: canonical(&fixture_path("cpp_app")),
        profiler_id: line.profiler_id.clone(),
        t0,
        t1,
        long_lived: long_lived.clone(),
        alive_at_end,
        transient_names: &["short-lived", "churner"],
        release: Some("cpp_app@1.2.3"),
        environment: Some("ci"),
        chunk_seconds: chunk,
    };
    let samples = check_chunks(&chunks, &facts);
    assert_eq!(samples, line.samples, "samples in chunks = summary");
    assert_eq!(
        line.samples + line.left_out,
        total_samples(&stderr),
        "every sample is in a chunk or counted as left out"
    );
    let stats = stats_line(&stderr);
    match server {
        Some(_) => {
            assert_eq!(
                number_before(&stats, " chunks accepted by Sentry"),
                Some(line.chunks),
                "{stats}"
            );
            assert!(
                stats.contains(&format!("({} samples)", line.samples)),
                "{stats}"
            );
            assert!(spool_files(&spool).is_empty(), "spool emptied");
        }
        None => {
            assert_eq!(
                number_before(&stats, " chunks written"),
                Some(line.chunks),
                "{stats}"
            );
            assert!(!spool.exists(), "no spool without a DSN");
        }
    }
    // The fixture's own functions, demangled.
    let names = functions(&chunks);
    for want in [
        "app::engine::Accumulator<int>::run()",
        "app::engine::Accumulator<double>::run()",
        "app::start_lambda_worker(unsigned long)::{lambda()#1}::operator()() const",
        "app::sync::cv_waiter(int)",
        "app::io::pipe_reader(int)",
        "app::churner(double)",
        "main",
        "start_thread",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    let by_name: HashMap<&str, i32> = long_lived.iter().map(|(t, n)| (n.as_str(), *t)).collect();
    for (thread, func) in [
        ("acc-int", "app::engine::Accumulator<int>::run()"),
        ("acc-double", "app::engine::Accumulator<double>::run()"),
        ("pipe-reader", "app::io::pipe_reader(int)"),
        ("cv-waiter-0", "app::sync::cv_waiter(int)"),
    ] {
        let share = share_with_function(&chunks, by_name[thread], func);
        assert!(
            share >= 0.95,
            "{thread}: {func} in {share:.3} of its samples"
        );
    }
}

/// Issue 3, "Done when" 1: a 3-minute session at 100 Hz in 60 s chunks, sent to the test
/// server. The one long test.
#[test]
fn three_minute_session_to_server() {
    let state = Arc::new(ServerState::default());
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    cpp_app_session(180.0, 60.0, Some((&state, port)), None);
}

/// The same checks on chunks written to an envelope directory (shorter).
#[test]
fn session_to_envelope_dir() {
    cpp_app_session(9.0, 3.0, None, Some("ptrace"));
}

/// Issue 10: the same chunks, thread by thread, when the perf source samples (the tests
/// above use ptrace); skipped, and said so, where perf events are not permitted.
#[test]
fn session_to_envelope_dir_perf_source() {
    if perf_source_permitted() {
        cpp_app_session(9.0, 3.0, None, Some("perf"));
    }
}

/// True when the perf source can run here; else says why the calling test is skipped.
fn perf_source_permitted() -> bool {
    let probe = Fixture::spawn("c_workers", &[]);
    match common::perf_permitted(probe.pid()) {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: the perf source cannot run here ({why})");
            false
        }
    }
}

// ---------------------------------------------------------------- debug images

/// GNU build-id of `path` as hex, from `readelf -n`.
fn readelf_build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf -n {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:"))
        .unwrap_or_else(|| panic!("{} has no build-id", path.display()))
        .trim()
        .to_string()
}

/// Sentry's debug_id of a little-endian ELF from its build-id (`docs/sentry-format.md`,
/// section "Debug ids"), written out: the first 16 bytes (zero-padded), bytes 0-3
/// reversed, 4-5 swapped, 6-7 swapped, formatted 8-4-4-4-12.
fn expected_debug_id(build_id_hex: &str) -> String {
    let mut b = [0u8; 16];
    for (i, slot) in b.iter_mut().enumerate() {
        if let Some(h) = build_id_hex.get(2 * i..2 * i + 2) {
            *slot = u8::from_str_radix(h, 16).unwrap();
        }
    }
    let swapped = [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ];
    let h: String = swapped.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[test]
fn debug_id_algorithm_matches_the_doc_examples() {
    // Worked examples of `docs/sentry-format.md`, section "Debug ids" (the ids Sentry's
    // tools compute).
    assert_eq!(
        expected_debug_id("451caec77109ec4461b4b9baaa58833f530dec65"),
        "c7ae1c45-0971-44ec-61b4-b9baaa58833f"
    );
    assert_eq!(
        expected_debug_id("68220ae2c65d65c1b6aaa12fa6765a6ec2f5f434"),
        "e20a2268-5dc6-c165-b6aa-a12fa6765a6e"
    );
    assert_eq!(
        expected_debug_id("1c304742f114215453a8a777f6cdb3a2b8505e11"),
        "4247301c-14f1-5421-53a8-a777f6cdb3a2"
    );
}

/// One `PT_LOAD` from `readelf -lW`.
#[derive(Debug)]
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

fn readelf_loads(path: &Path) -> Vec<Load> {
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Load {
                offset: hex(w[1]),
                vaddr: hex(w[2]),
                filesz: hex(w[4]),
                memsz: hex(w[5]),
            }
        })
        .collect()
}

/// One line of /proc/PID/maps with a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct MapLine {
    path: String,
    start: u64,
    end: u64,
    offset: u64,
}

fn read_maps(pid: i32) -> Vec<MapLine> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let path = w.get(5)?.to_string();
            let (s, e) = w[0].split_once('-')?;
            Some(MapLine {
                path,
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset: u64::from_str_radix(w[2], 16).ok()?,
            })
        })
        .collect()
}

/// Polls /proc/PID/maps every 20 ms while a run lasts (libraries come and go).
struct MapsWatcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<MapLine>>>,
    /// Per snapshot and path: (lowest start, highest end).
    ranges: Arc<Mutex<BTreeSet<(String, u64, u64)>>>,
    thread: Option<JoinHandle<()>>,
}

impl MapsWatcher {
    fn start(pid: i32) -> MapsWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let ranges = Arc::new(Mutex::new(BTreeSet::new()));
        let (s2, seen2, r2) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&ranges));
        let thread = std::thread::spawn(move || {
            loop {
                let maps = read_maps(pid);
                let mut per_path: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                for m in &maps {
                    let e = per_path.entry(m.path.clone()).or_insert((m.start, m.end));
                    e.0 = e.0.min(m.start);
                    e.1 = e.1.max(m.end);
                }
                seen2.lock().unwrap().extend(maps);
                r2.lock()
                    .unwrap()
                    .extend(per_path.into_iter().map(|(p, (a, b))| (p, a, b)));
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        MapsWatcher {
            stop,
            seen,
            ranges,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (BTreeSet<MapLine>, BTreeSet<(String, u64, u64)>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        (
            self.seen.lock().unwrap().clone(),
            self.ranges.lock().unwrap().clone(),
        )
    }
}

/// The vDSO of process `pid` written to a file (for `readelf`), from /proc/PID/mem.
fn dump_vdso(pid: i32, range: (u64, u64), to: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    let mut buf = vec![0u8; (range.1 - range.0) as usize];
    if mem.seek(SeekFrom::Start(range.0)).is_err() || mem.read_exact(&mut buf).is_err() {
        return false;
    }
    std::fs::write(to, &buf).unwrap();
    true
}

const PAGE: u64 = 4096;

fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// Checks every image of the chunks against readelf and the maps seen during the run.
/// Returns the code files checked.
fn check_images(
    chunks: &[(Value, Option<String>)],
    pid: i32,
    maps: &BTreeSet<MapLine>,
    ranges: &BTreeSet<(String, u64, u64)>,
    tmp: &Path,
) -> BTreeSet<String> {
    let mut checked = BTreeSet::new();
    let mut images: BTreeMap<(String, u64), Value> = BTreeMap::new();
    for (c, _) in chunks {
        for im in c["debug_meta"]["images"].as_array().unwrap() {
            let key = (
                im["code_file"].as_str().unwrap().to_string(),
                hex_addr(&im["image_addr"]),
            );
            if let Some(prev) = images.get(&key) {
                assert_eq!(prev, im, "one image, one description");
            }
            images.insert(key, im.clone());
        }
    }
    for ((code_file, image_addr), im) in &images {
        let size = im["image_size"].as_u64().unwrap();
        let vmaddr = hex_addr(&im["image_vmaddr"]);
        assert!(
            ranges.contains(&(code_file.clone(), *image_addr, image_addr + size)),
            "{code_file} at {image_addr:#x}+{size:#x} does not match /proc/{pid}/maps: {:?}",
            ranges
                .iter()
                .filter(|r| &r.0 == code_file)
                .collect::<Vec<_>>()
        );
        let file = if code_file == "[vdso]" {
            let f = tmp.join("vdso.so");
            if !dump_vdso(pid, (*image_addr, image_addr + size), &f) {
                eprintln!("cannot read the vDSO of {pid}; its debug_id is not checked");
                continue;
            }
            f
        } else {
            PathBuf::from(code_file)
        };
        let build_id = readelf_build_id(&file);
        assert_eq!(
            im["debug_id"].as_str().unwrap(),
            expected_debug_id(&build_id),
            "debug_id of {code_file} (build-id {build_id})"
        );
        assert_eq!(im["code_id"].as_str(), Some(build_id.as_str()));
        let loads = readelf_loads(&file);
        assert!(!loads.is_empty(), "{code_file}: no PT_LOAD");
        assert_eq!(vmaddr, loads[0].vaddr, "image_vmaddr of {code_file}");
        if code_file != "[vdso]" {
            // Every PT_LOAD is mapped where the load bias puts it, from its file offset.
            let bias = image_addr - page_down(loads[0].vaddr);
            for l in &loads {
                let at = bias + page_down(l.vaddr);
                assert!(
                    maps.iter().any(|m| &m.path == code_file
                        && m.start == at
                        && m.offset == page_down(l.offset)),
                    "{code_file}: PT_LOAD {l:?} not mapped at {at:#x}"
                );
            }
            let lo = page_down(loads[0].vaddr);
            let file_end = loads.iter().map(|l| page_up(l.vaddr + l.filesz)).max();
            let mem_end = loads.iter().map(|l| page_up(l.vaddr + l.memsz)).max();
            assert!(
                size >= file_end.unwrap() - lo && size <= mem_end.unwrap() - lo,
                "{code_file}: image_size {size:#x} outside the PT_LOAD extent"
            );
        }
        checked.insert(code_file.clone());
    }
    checked
}

/// Issue 3, "Done when" 2: for every fixture program, each image's debug_id is the one
/// the build-id gives (computed here from `readelf -n`), and its place and size match
/// `/proc/PID/maps` and the program headers.
#[test]
fn debug_images_of_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let programs: &[(&str, &[&str])] = &[
        ("cpp_app", &["--churn-rate", "0"]),
        ("c_workers", &[]),
        ("c_workers_fp", &[]),
        ("c_workers_stripped_buildid", &[]),
        ("c_workers_stripped_debuglink", &[]),
        ("rust_app_legacy", &[]),
        ("rust_app_v0", &[]),
        ("deep_recursion", &["--depth", "200"]),
        ("signals_app", &[]),
        ("busy_threads", &["--busy", "1", "--idle", "1"]),
        ("dlopen_app", &["--phase-ms", "1000", "--wait-traced"]),
    ];
    let mut all_checked = BTreeSet::new();
    for (name, fx_args) in programs {
        let mut fx = Fixture::spawn(name, fx_args);
        let out = tmp.path().join(name);
        let out_arg = format!("{}/", out.display());
        let watcher = MapsWatcher::start(fx.pid());
        let finite = *name == "dlopen_app";
        let a = attach_args(
            fx.pid(),
            50,
            (!finite).then_some(1.5),
            1.0,
            &["--output", &out_arg],
        );
        let (status, stderr) = Agent::spawn(&a, &[]).wait(Duration::from_secs(60));
        let (maps, ranges) = watcher.finish();
        assert!(status.success(), "{name}: {stderr}");
        let chunks = read_envelope_dir(&out);
        assert!(!chunks.is_empty(), "{name}: no chunks");
        let checked = check_images(&chunks, fx.pid(), &maps, &ranges, tmp.path());
        let exe = canonical(&fixture_path(name));
        assert!(
            checked.contains(&exe),
            "{name}: no image of {exe}: {checked:?}"
        );
        if finite {
            assert!(fx.wait_exit(Duration::from_secs(10)).is_some());
            let lines = fx.stdout_lines();
            for lib in ["a", "b"] {
                let base = lines
                    .iter()
                    .find(|l| l.starts_with(&format!("loaded {lib} ")))
                    .and_then(|l| common::parse_loaded_address(l))
                    .unwrap_or_else(|| panic!("no `loaded {lib}` line: {lines:?}"));
                let so = canonical(&fixture_path(&format!("libdl_{lib}.so")));
                let img = chunks
                    .iter()
                    .flat_map(|(c, _)| c["debug_meta"]["images"].as_array().unwrap().clone())
                    .find(|im| im["code_file"] == so.as_str())
                    .unwrap_or_else(|| {
                        let mut packages: BTreeMap<String, usize> = BTreeMap::new();
                        for (c, _) in &chunks {
                            for fr in c["profile"]["frames"].as_array().unwrap() {
                                let p = fr["package"].as_str().unwrap_or("-").to_string();
                                *packages.entry(p).or_default() += 1;
                            }
                        }
                        panic!("no image of {so}; frames per package: {packages:?}\n{stderr}")
                    });
                assert_eq!(hex_addr(&img["image_addr"]), base, "{so} base");
                assert!(checked.contains(&so));
            }
        }
        all_checked.extend(checked);
    }
    eprintln!("checked images: {all_checked:?}");
    for lib in ["libc.so", "libstdc++.so", "[vdso]"] {
        assert!(
            all_checked.iter().any(|c| basename(c).starts_with(lib)),
            "no {lib} image: {all_checked:?}"
        );
    }
}

/// Chunks of a Rust program linked by lld (rustc's default linker since 1.90), whose code
/// segment's file offset and address differ by a page: the cruncher threads' leaves are
/// named `rust_app::crunch::<u64>` / `<f64>` and their stacks reach `start_thread`.
/// (A regression test: the bias was once taken from the read-only segment before the code,
/// which shares the code's first page, so every address was off by 0x1000.)
#[test]
fn rust_fixture_frames_named_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixture::spawn("rust_app_v0", &[]);
    let threads = thread_map(&fx);
    let out = format!("{}/", tmp.path().join("chunks").display());
    let a = attach_args(fx.pid(), 50, Some(2.0), 1.0, &["--output", &out]);
    let (status, stderr) = Agent::spawn(&a, &[]).wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let chunks = read_envelope_dir(&tmp.path().join("chunks"));
    // The fixture's two cruncher threads, each checked.
    let crunchers: Vec<(i32, &str)> = threads
        .iter()
        .filter(|(_, name)| name.starts_with("rust-crunch-"))
        .map(|(tid, name)| (*tid, name.as_str()))
        .collect();
    let mut names: Vec<&str> = crunchers.iter().map(|(_, n)| *n).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["rust-crunch-f64", "rust-crunch-u64"],
        "the fixture's cruncher threads; all threads: {threads:?}"
    );
    for (tid, name) in crunchers {
        let func = match name {
            "rust-crunch-u64" => "rust_app::crunch::<u64>",
            _ => "rust_app::crunch::<f64>",
        };
        let share = share_with_function(&chunks, tid, func);
        assert!(share >= 0.9, "{name}: {func} in {share:.2} of its samples");
        let root = share_with_function(&chunks, tid, "start_thread");
        assert!(
            root >= 0.9,
            "{name}: start_thread in {root:.2} of its samples"
        );
    }
}

// ---------------------------------------------------------------- upload behaviour

/// Long-lived, low-cost target for the upload tests: one spinning and one sleeping thread.
fn small_target() -> Fixture {
    Fixture::spawn("busy_threads", &["--busy", "1", "--idle", "1"])
}

/// Every chunk the summary counts arrived once (by id), with all its samples.
fn assert_all_once(state: &ServerState, stderr: &str) -> Vec<String> {
    state.assert_no_errors();
    let line = chunk_line(stderr);
    let acc = state.accepted();
    let ids: Vec<String> = acc.iter().map(|r| r.chunk_id.clone()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a chunk arrived twice: {ids:?}");
    assert_eq!(ids.len() as u64, line.chunks, "chunks accepted = made");
    let samples: u64 = acc.iter().map(|r| r.samples as u64).sum();
    assert_eq!(samples, line.samples);
    assert!(
        acc.iter()
            .all(|r| r.payload["profiler_id"] == line.profiler_id.as_str())
    );
    let stats = stats_line(stderr);
    assert_eq!(
        number_before(&stats, " chunks accepted by Sentry"),
        Some(line.chunks),
        "{stats}"
    );
    assert!(!stats.contains("dropped"), "{stats}");
    assert!(!stats.contains("left in the spool"), "{stats}");
    ids
}

/// Server down (port closed) for `outage` after the first failed upload, then up: every
/// chunk arrives exactly once, after several backoff rounds.
fn down_then_up(secs: f64, chunk: f64, outage: Duration, flush: f64, min_retries: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let port = closed_port();
    let fx = small_target();
    let dsn = dsn_for(port);
    let flush = flush.to_string();
    let a = attach_args(
        fx.pid(),
        50,
        Some(secs),
        chunk,
        &[
            "--dsn",
            &dsn,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--flush-timeout",
            &flush,
        ],
    );
    let agent = Agent::spawn(&a, &[]);
    wait_for("the first failed upload", Duration::from_secs(60), || {
        agent.has_line("failed")
    });
    let first_failure = Instant::now();
    assert!(!spool_files(&spool).is_empty(), "chunk waits in the spool");
    std::thread::sleep(outage);
    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    let up_at = Instant::now();
    let (status, stderr) = agent.wait(Duration::from_secs_f64(secs + 300.0));
    assert!(status.success(), "{stderr}");
    assert_all_once(&state, &stderr);
    let stats = stats_line(&stderr);
    let retries = number_before(&stats, " retries").unwrap();
    assert!(
        retries >= min_retries,
        "{retries} retries during a {outage:?} outage: {stats}"
    );
    let first = state.received()[0].at;
    assert!(first >= up_at, "nothing arrived while down");
    eprintln!(
        "first request {:?} after the first failure, {:?} after the server came up",
        first - first_failure,
        first - up_at
    );
    assert!(
        stderr.contains(&format!(
            "upload to http://127.0.0.1:{port}/api/42/envelope/ failed"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("upload to Sentry works again"), "{stderr}");
    assert!(spool_files(&spool).is_empty(), "spool emptied");
}

/// Issue 3, "Done when" 3a, short form: 8 s down from the first failure. Backoff starts at
/// 0.5-1 s and doubles, so at least 4 attempts fail (3 backoff rounds) before it is back.
#[test]
fn server_down_then_up_every_chunk_once() {
    down_then_up(10.0, 2.0, Duration::from_secs(8), 40.0, 4);
}

/// Issue 3, "Done when" 3a as written: two minutes down (backoff reaches its 60 s cap).
/// Not run by CI: `make test-long`.
#[test]
#[ignore = "takes about 4 minutes"]
fn server_down_two_minutes_then_up() {
    down_then_up(140.0, 10.0, Duration::from_secs(120), 120.0, 6);
}

/// Issue 3, "Done when" 3b: after a 429 with `Retry-After: 30` no request comes for 30 s;
/// then every chunk arrives once.
#[test]
fn retry_after_30_is_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    state.push(reply_with(429, &[("Retry-After", "30")], ""));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let fx = small_target();
    let dsn = dsn_for(port);
    let spool = tmp.path().join("spool");
    let a = attach_args(
        fx.pid(),
        50,
        Some(4.0),
        1.0,
        &[
            "--dsn",
            &dsn,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--flush-timeout",
            "60",
        ],
    );
    let (status, stderr) = Agent::spawn(&a, &[]).wait(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    let r = state.received();
    assert_eq!(r[0].status, Some(429));
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_secs(30), "next request after {gap:?}");
    assert!(gap < Duration::from_secs(45), "resumed late: {gap:?}");
    // The 429'd chunk was kept and sent first when the limit ended.
    assert_eq!(r[1].chunk_id, r[0].chunk_id);
    assert!(r[1..].iter().all(|x| x.status == Some(200)));
    assert_all_once(&state, &stderr);
    let stats = stats_line(&stderr);
    assert!(stats.contains("(1 responses)"), "{stats}");
    let limited: f64 = stats
        .split("rate limited ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{stats}"));
    assert!((29.0..45.0).contains(&limited), "{stats}");
    assert!(
        stderr.contains("Sentry rate limit: profile chunks paused for 30 s"),
        "{stderr}"
    );
}

/// Issue 3, "Done when" 3c: an agent killed with SIGKILL mid-run leaves its chunks in the
/// spool; the next agent, attached to the same program with the same spool, sends them
/// first (oldest first), then its own, each once.
#[test]
fn sigkilled_agent_spool_sent_by_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let spool_arg = spool.to_str().unwrap().to_string();
    let id1 = tmp.path().join("id1");
    let id2 = tmp.path().join("id2");
    let port = closed_port();
    let dsn = dsn_for(port);
    let fx = small_target();

    let a = attach_args(
        fx.pid(),
        50,
        None,
        1.0,
        &[
            "--dsn",
            &dsn,
            "--spool-dir",
            &spool_arg,
            "--profiler-id-file",
            id1.to_str().unwrap(),
        ],
    );
    let agent = Agent::spawn(&a, &[]);
    wait_for("three spooled chunks", Duration::from_secs(60), || {
        spool_files(&spool).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..700)));
    let stderr1 = agent.kill9();
    assert!(
        !stderr1.contains("sentry: profiler_id"),
        "killed before the summary"
    );
    let left: Vec<PathBuf> = spool_files(&spool);
    assert!(left.len() >= 3);
    let profiler1 = std::fs::read_to_string(&id1).unwrap().trim().to_string();
    for f in &left {
        // A header line (destination, chunk id, length), then the chunk.
        let bytes = std::fs::read(f).unwrap();
        let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
        let header: Value = serde_json::from_slice(&bytes[..nl]).unwrap();
        assert_eq!(header["chunk_id"], spool_chunk_id(f).as_str());
        assert!(
            !header.to_string().contains(&KEY[..8]),
            "no key in the spool"
        );
        let v: Value = serde_json::from_slice(&bytes[nl + 1..]).unwrap();
        validate_item(&v, None).unwrap();
        assert_eq!(v["profiler_id"], profiler1.as_str());
        assert_eq!(v["chunk_id"], spool_chunk_id(f).as_str());
    }
    let left_ids: Vec<String> = left.iter().map(|p| spool_chunk_id(p)).collect();
    // The kernel detached the program when its tracer died.
    wait_for("tracer gone", Duration::from_secs(5), || {
        tracer_pid(fx.pid()) == Some(0)
    });

    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start(port, Arc::clone(&state));
    let a = attach_args(
        fx.pid(),
        50,
        Some(3.0),
        1.0,
        &[
            "--dsn",
            &dsn,
            "--spool-dir",
            &spool_arg,
            "--profiler-id-file",
            id2.to_str().unwrap(),
        ],
    );
    let (status, stderr2) = Agent::spawn(&a, &[]).wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr2}");
    assert!(
        stderr2.contains(&format!(
            "{} chunk(s) left in the spool by an earlier run will be sent first",
            left.len()
        )),
        "{stderr2}"
    );
    state.assert_no_errors();
    let acc = state.accepted();
    let ids: Vec<String> = acc.iter().map(|r| r.chunk_id.clone()).collect();
    assert_eq!(
        &ids[..left.len()],
        &left_ids[..],
        "the earlier run's chunks first"
    );
    let profiler2 = std::fs::read_to_string(&id2).unwrap().trim().to_string();
    assert_ne!(profiler1, profiler2);
    let line = chunk_line(&stderr2);
    assert_eq!(line.profiler_id, profiler2);
    assert_eq!(ids.len() as u64, left.len() as u64 + line.chunks);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "each once");
    for r in &acc[left.len()..] {
        assert_eq!(r.payload["profiler_id"], profiler2.as_str());
    }
    let stats = stats_line(&stderr2);
    assert_eq!(
        number_before(&stats, " chunks accepted by Sentry"),
        Some(ids.len() as u64),
        "{stats}"
    );
    assert!(spool_files(&spool).is_empty());
}

/// Issue 3, "Done when" 3d: with the server down and a spool of room for about two chunks,
/// the oldest chunks are dropped first, each named in a warning, and counted.
#[test]
fn full_spool_drops_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let port = closed_port();
    let dsn = dsn_for(port);
    let fx = small_target();
    let max_bytes: u64 = 40_000; // a 1 s chunk of this target is ~15 kB
    let a = attach_args(
        fx.pid(),
        50,
        Some(8.0),
        1.0,
        &[
            "--dsn",
            &dsn,
            "--spool-dir",
            spool.to_str().unwrap(),
            "--spool-max-bytes",
            &max_bytes.to_string(),
            "--flush-timeout",
            "1",
        ],
    );
    // Watch the spool: file names start with their creation time, so the set of names seen
    // sorts into creation order. A chunk lives there at least until the next one (1 s).
    let agent = Agent::spawn(&a, &[]);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let (status, stderr) = loop {
        for f in spool_files(&spool) {
            seen.insert(f.file_name().unwrap().to_str().unwrap().to_string());
        }
        if agent.has_line("sentry: profiler_id") {
            break agent.wait(Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{stderr}");
    let created: Vec<String> = seen
        .iter()
        .map(|n| {
            n.trim_end_matches(".chunk")
                .split_once('-')
                .unwrap()
                .1
                .to_string()
        })
        .collect();
    let dropped: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.split("spool full: dropped the oldest chunk ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .collect();
    let line = chunk_line(&stderr);
    assert_eq!(created.len() as u64, line.chunks, "every chunk was spooled");
    assert!(!dropped.is_empty(), "spool never full: {stderr}");
    assert_eq!(&created[..dropped.len()], &dropped[..], "oldest first");
    let left: Vec<String> = spool_files(&spool)
        .iter()
        .map(|p| spool_chunk_id(p))
        .collect();
    assert_eq!(&created[dropped.len()..], &left[..], "the newest stay");
    let bytes: u64 = spool_files(&spool)
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        bytes <= max_bytes,
        "{bytes} bytes in a {max_bytes}-byte spool"
    );
    let stats = stats_line(&stderr);
    let d = dropped.len();
    assert!(
        stats.contains(&format!("{d} dropped (0 rejected, {d} spool full, 0 I/O)")),
        "{stats}"
    );
    assert!(
        stats.contains(&format!("{} left in the spool", left.len())),
        "{stats}"
    );
    assert!(!stderr.contains("larger than the whole spool"));
}

// ---------------------------------------------------------------- the key stays secret

fn assert_key_hidden(text: &str) {
    assert!(!text.contains(KEY), "key in output:\n{text}");
    assert!(!text.contains(&KEY[..8]), "key prefix in output:\n{text}");
}

/// Issue 3, "Done when" 4a: a server that answers 400 (and echoes the key in its body);
/// the DSN given through SENTRY_DSN. The rejection is reported, the key never shown.
#[test]
fn key_hidden_when_server_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let state = Arc::new(ServerState::default());
    state.set_default(reply_with(
        400,
        &[],
        &format!(r#"{{"detail":"bad request for sentry_key={KEY}"}}"#),
    ));
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let fx = small_target();
    let dsn = dsn_for(port);
    let spool = tmp.path().join("spool");
    let a = attach_args(
        fx.pid(),
        50,
        Some(3.0),
        1.0,
        &["--spool-dir", spool.to_str().unwrap(), "--verbose"],
    );
    let (status, stderr) =
        Agent::spawn(&a, &[("SENTRY_DSN", dsn.as_str())]).wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    state.assert_no_errors();
    let r = state.received();
    assert!(!r.is_empty() && r.iter().all(|x| x.status == Some(400)));
    assert!(stderr.contains("HTTP 400"), "rejection reported: {stderr}");
    assert!(
        stderr.contains("bad request for sentry_key=e3b0…"),
        "{stderr}"
    );
    let line = chunk_line(&stderr);
    let stats = stats_line(&stderr);
    assert!(
        stats.contains(&format!("{0} dropped ({0} rejected", line.chunks)),
        "{stats}"
    );
    assert_key_hidden(&stderr);

    // Nor does `--help` show the value of SENTRY_DSN.
    let help = Command::new(env!("CARGO_BIN_EXE_profiler"))
        .args(["attach", "--help"])
        .env("SENTRY_DSN", &dsn)
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--dsn"));
    assert_key_hidden(&text);
}

/// Issue 3, "Done when" 4b: a bad DSN is refused before attaching, with a clear message
/// naming what is wrong, exit code 1, and the key not shown.
#[test]
fn bad_dsn_is_a_clear_error() {
    let fx = small_target();
    let cases: Vec<(String, &str)> = vec![
        (format!("http://{KEY}@127.0.0.1:9000"), "missing project id"),
        (
            format!("ftp://{KEY}@127.0.0.1/42"),
            "unsupported scheme `ftp`",
        ),
        (format!("{KEY}@127.0.0.1/42"), "missing `scheme://`"),
        (
            "https://o1.ingest.sentry.io/42".to_string(),
            "missing public key",
        ),
        (format!("http://{KEY}@127.0.0.1:99999/42"), "bad port"),
        (
            format!("http://{KEY}@exa mple.com/42"),
            "invalid character in the host",
        ),
        (
            format!("http://{KEY}@host/4 2"),
            "invalid character in the project id",
        ),
        (
            format!("http://{KEY}!x\"@host/42"),
            "invalid character in the public key",
        ),
    ];
    for (dsn, why) in &cases {
        for via_env in [false, true] {
            let mut a = attach_args(fx.pid(), 50, Some(1.0), 1.0, &[]);
            let mut env = vec![];
            if via_env {
                env.push(("SENTRY_DSN", dsn.as_str()));
            } else {
                a.extend(["--dsn".to_string(), dsn.clone()]);
            }
            let (status, stderr) = Agent::spawn(&a, &env).wait(Duration::from_secs(30));
            assert_eq!(status.code(), Some(1), "{dsn}: {stderr}");
            let from = if via_env { "SENTRY_DSN" } else { "--dsn" };
            assert!(
                stderr.contains(&format!("profiler: error: {from}: invalid DSN")),
                "{dsn}: {stderr}"
            );
            assert!(stderr.contains(why), "{dsn}: expected {why:?} in {stderr}");
            assert!(!stderr.contains("attached"), "refused before attaching");
            assert_key_hidden(&stderr);
        }
    }
    assert_eq!(tracer_pid(fx.pid()), Some(0));
}

// ---------------------------------------------------------------- library swaps

/// Issue 9: `dlopen_app --swaps` unloads one library and loads another of the same layout
/// at the same address every 0.5 s, recording (CLOCK_REALTIME) when each one ran. At 1000
/// Hz, every sample taken while one ran is named after it and none after the other, and no
/// chunk lists two images over the same addresses (Sentry could not tell which one an
/// address belongs to).
fn library_swaps_named_at_once(sampler: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // The perf source does not trace: the program then starts at once, and the part of
    // its first run before the agent is ready has no samples to check.
    let mut fx_args = vec!["--swaps", "8", "--phase-ms", "500"];
    if sampler == "ptrace" {
        fx_args.push("--wait-traced");
    }
    let mut fx = Fixture::spawn("dlopen_app", &fx_args);
    let out = tmp.path().join("chunks");
    let out_arg = format!("{}/", out.display());
    let a = attach_args(
        fx.pid(),
        1000,
        None,
        60.0,
        &["--output", &out_arg, "--sampler", sampler, "-v"],
    );
    let (status, stderr) = Agent::spawn(&a, &[]).wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(fx.wait_exit(Duration::from_secs(10)).is_some());
    // (library, start, end) in seconds since the epoch, each shrunk by 1 ms at both ends:
    // a sample's time is when its thread was asked to stop.
    let mut runs = Vec::new();
    let mut bases = BTreeSet::new();
    for l in fx.stdout_lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&"ran") {
            continue;
        }
        let ns = |s: &str| s.parse::<u64>().unwrap() as f64 / 1e9;
        bases.insert(f[2].to_string());
        runs.push((f[1].to_string(), ns(f[3]) + 0.001, ns(f[4]) - 0.001));
    }
    assert_eq!(runs.len(), 8, "{:?}", fx.stdout_lines());
    if bases.len() != 1 {
        common::skip(&format!(
            "the kernel mapped the two libraries at different addresses ({bases:?}): no swap in place to test"
        ));
        return;
    }
    let chunks = read_envelope_dir(&out);
    let (mut inside, mut wrong) = (BTreeMap::<String, u64>::new(), Vec::new());
    for (c, _) in &chunks {
        // No two images of one chunk overlap.
        let images = c["debug_meta"]["images"].as_array().unwrap();
        for (i, x) in images.iter().enumerate() {
            for y in &images[i + 1..] {
                let (xa, ya) = (hex_addr(&x["image_addr"]), hex_addr(&y["image_addr"]));
                let xs = x["image_size"].as_u64().unwrap();
                let ys = y["image_size"].as_u64().unwrap();
                assert!(
                    xa + xs <= ya || ya + ys <= xa,
                    "one chunk lists overlapping images {} and {}",
                    x["code_file"],
                    y["code_file"]
                );
            }
        }
        let p = &c["profile"];
        let frames = p["frames"].as_array().unwrap();
        let stacks = p["stacks"].as_array().unwrap();
        for s in p["samples"].as_array().unwrap() {
            if s["thread_id"] != fx.pid().to_string().as_str() {
                continue;
            }
            let t = s["timestamp"].as_f64().unwrap();
            let Some((lib, _, _)) = runs.iter().find(|(_, a, b)| t >= *a && t <= *b) else {
                continue;
            };
            let names: Vec<&str> = stacks[s["stack_id"].as_u64().unwrap() as usize]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| frames[i.as_u64().unwrap() as usize]["function"].as_str())
                .collect();
            let (want, other) = if lib == "a" {
                ("liba_work", "libb_work")
            } else {
                ("libb_work", "liba_work")
            };
            *inside.entry(lib.clone()).or_default() += 1;
            if names.contains(&other) || !names.contains(&want) {
                wrong.push(format!("{t:.4} while {lib} ran: {names:?}"));
            }
        }
    }
    eprintln!(
        "samples while each library ran: {inside:?}; misnamed: {}",
        wrong.len()
    );
    assert!(
        inside.len() == 2 && inside.values().all(|&n| n >= 200),
        "too few samples inside the runs: {inside:?}\n{stderr}"
    );
    assert!(
        wrong.is_empty(),
        "{} samples named after the wrong library, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

#[test]
fn library_swaps_named_at_once_ptrace() {
    library_swaps_named_at_once("ptrace");
}

#[test]
fn library_swaps_named_at_once_perf() {
    if perf_source_permitted() {
        library_swaps_named_at_once("perf");
    }
}
