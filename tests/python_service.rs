//! Traces linked by a real SDK: `examples/python-service/app.py` (a WSGI app with
//! sentry-sdk 2.x from PyPI, installed in `$CARGO_TARGET_DIR/pyvenv` by `.ci/run`) serves N
//! requests with the agent attached; both send to a local capture server on the same DSN.
//! Each transaction must carry the agent's `profiler_id` and the kernel thread id of the
//! thread that served it, and the agent's chunks must hold samples of that thread inside
//! the transaction's time window with the view function's Python frame.

mod common;
#[path = "common/sentry_server.rs"]
mod sentry_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry_server::{ServerState, TestServer, dsn_for, wait_for};
use serde_json::Value;

const REQUESTS: usize = 5;

fn venv_python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    target.join("pyvenv/bin/python")
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Unix seconds of an RFC 3339 UTC time (`2026-12-07T15:00:00.123456Z`) or a number.
fn unix(v: &Value) -> f64 {
    if let Some(f) = v.as_f64() {
        return f;
    }
    let s = v.as_str().expect("a time");
    let s = s.trim_end_matches('Z').trim_end_matches("+00:00");
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    days as f64 * 86400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

#[test]
fn transactions_link_to_the_agents_python_profile() {
    let python = venv_python();
    let has_sdk = python.exists()
        && Command::new(&python)
            .args(["-c", "import sentry_sdk"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_sdk {
        common::skip(&format!(
            "no sentry-sdk in {} (python3 -m venv it; pip install 'sentry-sdk<3'; .ci/run does)",
            python.display()
        ));
        return;
    }
    let state = Arc::new(ServerState::default());
    let (_server, port) = TestServer::start(0, Arc::clone(&state));
    let dsn = dsn_for(port);
    let tmp = tempfile::tempdir().unwrap();
    let id_file = tmp.path().join("profiler-id");
    let app_py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python-service/app.py");
    let mut app = Command::new(&python)
        .arg(&app_py)
        .args(["--port", "0"])
        .env("SENTRY_DSN", &dsn)
        .env("PROFILER_ID_FILE", &id_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(app.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"ready"), "app said {line:?}");
    let (pid, app_port, main_tid): (i32, u16, String) = (
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].to_string(),
    );
    let mut agent = common::ptrace_agent()
        .args([
            "attach",
            "--sampler",
            "ptrace",
            "-F",
            "200",
            "--pid",
            &pid.to_string(),
        ])
        .args(["--dsn", &dsn, "--profiler-id-file"])
        .arg(&id_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the profiler id file", Duration::from_secs(20), || {
        std::fs::read_to_string(&id_file).is_ok_and(|s| s.trim().len() == 32)
    });
    let profiler_id = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..REQUESTS {
        assert!(get(app_port, "/work").contains("200 OK"));
    }
    assert!(get(app_port, "/flush").contains("200 OK"));
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut agent_err = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut agent_err)
        .unwrap();
    let _ = app.kill();
    let _ = app.wait();
    state.assert_no_errors();

    let transactions: Vec<Value> = state
        .sdk_items()
        .into_iter()
        .filter(|(h, p)| {
            h["type"] == "transaction"
                && p["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/work"))
        })
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        transactions.len(),
        REQUESTS,
        "transactions of /work; agent said:\n{agent_err}"
    );
    let chunks: Vec<Arc<Value>> = state.accepted().into_iter().map(|r| r.payload).collect();
    assert!(!chunks.is_empty(), "no chunk from the agent:\n{agent_err}");
    for c in &chunks {
        assert_eq!(c["profiler_id"], profiler_id.as_str());
        assert_eq!(c["platform"], "python");
    }
    for t in &transactions {
        let ctx = &t["contexts"];
        assert_eq!(ctx["profile"]["profiler_id"], profiler_id.as_str(), "{ctx}");
        let tid = ctx["trace"]["data"]["thread.id"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            tid, main_tid,
            "the thread id is the kernel tid of the serving thread"
        );
        let (start, end) = (unix(&t["start_timestamp"]), unix(&t["timestamp"]));
        let mut inside = 0;
        let mut with_view = 0;
        for c in &chunks {
            let frames = c["profile"]["frames"].as_array().unwrap();
            let stacks = c["profile"]["stacks"].as_array().unwrap();
            for s in c["profile"]["samples"].as_array().unwrap() {
                let ts = s["timestamp"].as_f64().unwrap();
                if s["thread_id"] != tid || ts < start || ts > end {
                    continue;
                }
                inside += 1;
                let stack = stacks[s["stack_id"].as_u64().unwrap() as usize]
                    .as_array()
                    .unwrap();
                if stack.iter().any(|i| {
                    let f = &frames[i.as_u64().unwrap() as usize];
                    f["function"] == "work_view" && f["platform"] == "python"
                }) {
                    with_view += 1;
                }
            }
        }
        eprintln!(
            "transaction {start:.3}..{end:.3} on thread {tid}: {inside} samples inside, {with_view} with work_view"
        );
        assert!(
            inside >= 3 && with_view * 2 >= inside,
            "transaction {start}..{end}: {inside} samples of thread {tid} inside, {with_view} with work_view"
        );
    }
}
