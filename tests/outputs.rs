//! Local outputs read back by readers that share no code with the writers (speedscope's
//! schema rules, `go tool pprof`, `protoc --decode_raw`, the Firefox Profiler's tables),
//! on-CPU against wall-clock counting, the summary of a target that exits, and what the
//! agent prints on a terminal and elsewhere.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Fixture;
use common::formats::{self, Stack};

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_profiler"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "profiler did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .map(|l| {
            let (s, n) = l.rsplit_once(' ').unwrap();
            (
                s.split(';').map(str::to_string).collect(),
                n.parse().unwrap(),
            )
        })
        .collect()
}

/// The number right after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)?;
    text[at + key.len()..]
        .split_whitespace()
        .next()?
        .trim_end_matches([',', ':', ';', ')'])
        .parse()
        .ok()
}

/// Share of the weight of `stacks` whose leaf is `leaf`, among stacks of threads whose
/// name starts with `thread`.
fn leaf_share(stacks: &[Stack], thread: &str, leaf: &str) -> f64 {
    let mine: Vec<&Stack> = stacks.iter().filter(|s| s.0.starts_with(thread)).collect();
    let all: f64 = mine.iter().map(|s| s.2).sum();
    let hit: f64 = mine
        .iter()
        .filter(|s| s.1.last().is_some_and(|f| f == leaf))
        .map(|s| s.2)
        .sum();
    hit / all
}

#[test]
fn every_format_from_one_session_reads_back() {
    let _l = live();
    let fx = Fixture::spawn("busy_threads", &["--busy", "1", "--idle", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let pid = fx.pid().to_string();
    let paths = [
        p("p.folded"),
        p("P.SVG"),
        p("p.speedscope.json"),
        p("p.pb.gz"),
        p("p.JSON.GZ"),
    ];
    let mut args = vec!["attach", "-p", &pid, "-d", "2", "-F", "200", "-o", "-"];
    for path in &paths {
        args.extend(["-o", path.to_str().unwrap()]);
    }
    let o = run(&args);
    let summary = stderr(&o);
    assert!(o.status.success(), "{summary}");

    // Folded stacks, to the file and to standard output alike: threads that ran only.
    let text = std::fs::read_to_string(&paths[0]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        text,
        "-o - is the folded text"
    );
    let stacks = folded(&text);
    let n: u64 = stacks.iter().map(|(_, c)| c).sum();
    assert_eq!(
        number_after(&summary, "local outputs count the "),
        Some(n as f64),
        "{summary}"
    );
    let idle: u64 = stacks
        .iter()
        .filter(|(s, _)| s[0].starts_with("idle-"))
        .map(|(_, c)| c)
        .sum();
    assert!(n > 200, "{n} on-CPU samples\n{summary}");
    assert!(
        idle as f64 <= 0.02 * n as f64,
        "sleeping threads counted on-CPU: {idle} of {n}\n{text}"
    );
    assert!(summary.contains("on-CPU"), "{summary}");

    // The flame graph: title, subtitle, search box.
    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.contains(&format!("busy_threads (pid {pid})")), "title");
    assert!(
        svg.contains(&format!("at 200 Hz: {n} on-CPU samples")),
        "subtitle"
    );
    assert!(svg.contains("id=\"search\""), "search box");

    // speedscope: every rule of its schema; weights in seconds.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&paths[2]).unwrap()).unwrap();
    let ss = formats::check_speedscope(&v).unwrap_or_else(|e| panic!("speedscope: {e}"));
    let weight: f64 = ss.iter().map(|s| s.2).sum();
    assert!(
        (weight - n as f64 / 200.0).abs() < 1e-6,
        "{weight} s vs {n}"
    );
    assert!(leaf_share(&ss, "busy-0", "busy_spin") > 0.95);
    let busy = ss.iter().find(|s| s.0.starts_with("busy-0")).unwrap();
    assert!(
        busy.1
            .ends_with(&["busy_main".to_string(), "busy_spin".to_string()]),
        "root first: {:?}",
        busy.1
    );
    let active = v["activeProfileIndex"].as_u64().unwrap() as usize;
    assert!(
        v["profiles"][active]["name"]
            .as_str()
            .unwrap()
            .starts_with("busy-0"),
        "the busiest thread is shown first"
    );

    // pprof: go tool pprof's own reader.
    match formats::go_pprof_raw(&paths[3]) {
        None => eprintln!("SKIPPED: go tool pprof (install golang-go) not found"),
        Some(r) => {
            let raw = r.unwrap();
            assert_eq!(raw.period_type, "cpu nanoseconds");
            assert_eq!(raw.sample_types[0], "samples/count");
            assert!(raw.sample_types[1].starts_with("cpu/nanoseconds"));
            let count: i64 = raw.samples.iter().map(|s| s.0[0]).sum();
            let nanos: i64 = raw.samples.iter().map(|s| s.0[1]).sum();
            assert_eq!(count, n as i64);
            assert_eq!(nanos, n as i64 * 5_000_000);
            let busy: Vec<_> = raw
                .samples
                .iter()
                .filter(|s| s.2.iter().any(|l| l == "thread:[busy-0]"))
                .collect();
            assert!(!busy.is_empty());
            for s in busy {
                let f = raw.functions(&s.1);
                assert_eq!(&f[..2], ["busy_spin", "busy_main"], "leaf first: {f:?}");
                assert!(s.2.iter().any(|l| l.starts_with("thread_id:[")));
            }
        }
    }
    match formats::protoc_raw(&paths[3]) {
        None => eprintln!("SKIPPED: protoc --decode_raw (install protobuf-compiler) not found"),
        Some(r) => {
            let (strings, samples) = r.unwrap();
            assert_eq!(strings.first().map(String::as_str), Some(""));
            for s in ["busy_spin", "samples", "cpu", "nanoseconds", "thread"] {
                assert!(strings.iter().any(|x| x == s), "{s} in {strings:?}");
            }
            assert!(samples >= 1);
        }
    }

    // The Firefox Profiler's processed format, walked table by table.
    let (ff, fs) = formats::read_firefox(&paths[4]).unwrap();
    let count: f64 = fs.iter().map(|s| s.2).sum();
    assert_eq!(count, n as f64);
    assert!(leaf_share(&fs, "busy-0", "busy_spin") > 0.95);
    let threads = ff["threads"].as_array().unwrap();
    // The main thread, when it has samples (on-CPU by default), comes first.
    let main = threads.iter().position(|t| t["isMainThread"] == true);
    assert!(main.is_none_or(|i| i == 0), "the main thread first");
    let busy = threads.iter().find(|t| t["name"] == "busy-0").unwrap();
    let cpu = busy["samples"]["threadCPUDelta"].as_array().unwrap();
    assert!(
        cpu.iter().all(|d| d.as_f64().unwrap() > 0.0),
        "on-CPU samples carry CPU time"
    );
    assert!(summary.contains("wrote standard output"), "{summary}");
}

#[test]
fn idle_counts_waiting_threads_where_they_wait() {
    let _l = live();
    let fx = Fixture::spawn("busy_threads", &["--busy", "1", "--idle", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let ss = dir.path().join("p.speedscope.json");
    let pid = fx.pid().to_string();
    let o = run(&[
        "attach",
        "-p",
        &pid,
        "-d",
        "1",
        "-F",
        "200",
        "--idle",
        // Wall-clock as the ptrace sampler takes it: a sample of every thread at every tick.
        "--sampler",
        "ptrace",
        "-o",
        out.to_str().unwrap(),
        "-o",
        ss.to_str().unwrap(),
    ]);
    let summary = stderr(&o);
    assert!(o.status.success(), "{summary}");
    let stacks = folded(&std::fs::read_to_string(&out).unwrap());
    let n: u64 = stacks.iter().map(|(_, c)| c).sum();
    assert_eq!(number_after(&summary, "samples: "), Some(n as f64));
    assert!(summary.contains("wall-clock"), "{summary}");
    let mut per_thread: HashMap<&str, u64> = HashMap::new();
    for (s, c) in &stacks {
        *per_thread.entry(s[0].as_str()).or_default() += c;
    }
    // Every thread, waiting or not, about the same number of samples.
    for t in ["busy-0", "idle-0", "idle-1", "busy_threads"] {
        let got = per_thread.get(t).copied().unwrap_or(0);
        assert!(got as f64 >= 0.2 * n as f64, "{t}: {got} of {n}\n{summary}");
    }
    // A waiting thread shows the call it waits in.
    assert!(
        stacks
            .iter()
            .any(|(s, _)| s[0] == "idle-0" && s.iter().any(|f| f == "idle_sleep")),
        "{stacks:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ss).unwrap()).unwrap();
    let ss = formats::check_speedscope(&v).unwrap();
    assert!(ss.iter().any(|s| s.0.starts_with("idle-0")));
}

#[test]
fn summary_still_lists_the_threads_of_a_target_that_exited() {
    let _l = live();
    let fx = Fixture::spawn(
        "busy_threads",
        &["--busy", "2", "--idle", "1", "--seconds", "1"],
    );
    let pid = fx.pid().to_string();
    let o = run(&["attach", "-p", &pid, "-d", "20", "-F", "100"]);
    let summary = stderr(&o);
    assert!(o.status.success(), "{summary}");
    assert!(summary.contains("target exited"), "{summary}");
    assert!(!summary.contains("in 0 threads"), "{summary}");
    assert!(summary.contains("in 4 threads (4 exited)"), "{summary}");
    for t in ["busy-0", "busy-1", "idle-0", "busy_threads"] {
        let line = summary
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(t))
            .unwrap_or_else(|| panic!("{t} not listed\n{summary}"));
        assert!(line.ends_with("(exited)"), "{line}");
        let samples = number_after(line, t).unwrap();
        assert!(samples > 20.0, "{line}");
    }
    assert!(summary.contains("busy_spin"), "top functions\n{summary}");
}

#[test]
fn attach_without_output_says_where_the_profile_would_go() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let o = run(&["attach", "-p", &fx.pid().to_string(), "-d", "0.3"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("no --output given"), "{e}");
    assert!(
        e.contains("-o FILE") && e.contains(".speedscope.json"),
        "{e}"
    );
    // A name no format matches is refused before anything is attached.
    let o = run(&["attach", "-p", &fx.pid().to_string(), "-o", "p.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("*.json.gz (Firefox Profiler)"));
}

/// On a terminal one status line is redrawn in place on stderr; elsewhere none is written.
#[test]
fn status_line_only_on_a_terminal() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let o = run(&["attach", "-p", &pid, "-d", "1"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(!e.contains('\r') && !e.contains("\x1b["), "{e:?}");
    assert!(!e.contains("samples/s"), "{e}");
    // `script` gives the agent a pseudo-terminal.
    if formats::tool("script").is_none() {
        eprintln!("SKIPPED: script (util-linux) not found");
        return;
    }
    let cmd = format!("{} attach -p {pid} -d 1.5", env!("CARGO_BIN_EXE_profiler"));
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("\rprofiler: 1 s, ") && t.contains("samples/s, 1 threads"),
        "{t:?}"
    );
    assert!(
        t.contains("\r\x1b[K"),
        "the line is cleared at the end: {t:?}"
    );
}
