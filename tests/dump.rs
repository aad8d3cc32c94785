//! `profiler dump`: every thread's state and named stack, in text and JSON, on a process
//! with a thousand threads, on a stopped one; nothing is left stopped or traced.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, tracer_pid};
use serde_json::Value;

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn dump(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_profiler"))
        .arg("dump")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read the (large) output while waiting, with a bound on the wait.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("dump did not finish")
        })
}

/// The kernel's state letters of every thread of `pid`.
fn states(pid: i32) -> Vec<char> {
    common::threads(pid)
        .iter()
        .filter_map(|(tid, _)| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            s[s.rfind(')')? + 2..].chars().next()
        })
        .collect()
}

fn frames(t: &Value) -> Vec<&str> {
    t["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect()
}

#[test]
fn a_thousand_threads_named_with_their_waits_and_left_running() {
    let _l = live();
    let fx = Fixture::spawn("busy_threads", &["--busy", "1", "--idle", "1000"]);
    let pid = fx.pid();
    let o = dump(&["-p", &pid.to_string(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!(
        "dump of {} threads: captured within {:.1} ms, {:.0} ms in all",
        d["threads"].as_array().unwrap().len(),
        d["capture_ms"].as_f64().unwrap(),
        d["total_ms"].as_f64().unwrap()
    );
    let threads = d["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1002);
    assert_eq!(threads[0]["tid"], pid, "the main thread first");
    let (mut idle, mut sleeping) = (0, 0);
    for t in threads {
        let name = t["name"].as_str().unwrap();
        assert_eq!(t["complete"], true, "{t}");
        assert!(t["note"].is_null(), "{t}");
        let f = frames(t);
        if name.starts_with("idle-") {
            idle += 1;
            // Each wakes every 100 ms: a few are caught between two sleeps.
            assert!(f.contains(&"idle_main"), "{t}");
            if t["state"] != "sleeping" {
                continue;
            }
            sleeping += 1;
            assert_eq!(t["syscall"], "clock_nanosleep", "{t}");
            let at = f
                .iter()
                .position(|l| *l == "idle_sleep")
                .expect("idle_sleep");
            let fr = &t["frames"][at];
            assert!(fr["file"].as_str().unwrap().ends_with("busy_threads.c"));
            assert!(fr["line"].as_u64().unwrap() > 0);
            assert!(fr["address"].as_str().unwrap().starts_with("0x"));
            assert_eq!(f[at + 1], "idle_main");
        } else if name == "busy-0" {
            assert_eq!(f[0], "busy_spin", "{t}");
            assert_eq!(f[1], "busy_main", "{t}");
        }
    }
    assert_eq!(idle, 1000);
    // A thousand threads waking ten times a second queue for the CPUs of a small machine.
    assert!(
        sleeping >= 500,
        "{sleeping} of the idle threads seen sleeping"
    );
    // Nothing stopped, nothing traced.
    assert!(states(pid).iter().all(|&s| s != 't' && s != 'T'));
    for (tid, _) in common::threads(pid) {
        assert_eq!(tracer_pid(tid), Some(0), "thread {tid} still traced");
    }
}

#[test]
fn text_names_states_system_calls_and_lines() {
    let _l = live();
    let fx = Fixture::spawn("cpp_app", &[]);
    let pid = fx.pid().to_string();
    let o = dump(&["-p", &pid]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.starts_with(&format!("Process {pid} (cpp_app): ")),
        "{text}"
    );
    let block = |name: &str| {
        text.split("\n\n")
            .find(|b| b.contains(&format!("\"{name}\" (")))
            .unwrap_or_else(|| panic!("no thread {name}\n{text}"))
            .to_string()
    };
    let cv = block("cv-waiter-0");
    assert!(cv.contains("\"cv-waiter-0\" (sleeping in futex)"), "{cv}");
    assert!(cv.contains("app::sync::cv_waiter(int) at "), "{cv}");
    assert!(cv.contains("cpp_app.cpp:"), "{cv}");
    assert!(cv.contains("[inlined]"), "inlined frames are listed: {cv}");
    let pipe = block("pipe-reader");
    assert!(pipe.contains("(sleeping in read)"), "{pipe}");
    assert!(pipe.contains("app::io::pipe_reader(int)"), "{pipe}");
    // Waiting for its start or already running, it is named down to its entry.
    let acc = block("acc-int");
    assert!(acc.contains("app::acc_int_main() at "), "{acc}");
}

/// A process stopped by SIGSTOP stays stopped; its threads are dumped from what /proc
/// shows of them, and said so.
#[test]
fn a_stopped_process_stays_stopped() {
    let _l = live();
    let fx = Fixture::spawn("busy_threads", &["--busy", "0", "--idle", "2"]);
    let pid = fx.pid();
    let npid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !states(pid).iter().all(|&s| s == 'T') {
        assert!(Instant::now() < deadline, "{:?}", states(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = dump(&["-p", &pid.to_string(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let idle = d["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "idle-0")
        .unwrap();
    assert_eq!(idle["state"], "stopped");
    assert!(idle["note"].as_str().unwrap().contains("SIGSTOP"), "{idle}");
    assert!(frames(idle).contains(&"idle_sleep"), "{idle}");
    assert!(states(pid).iter().all(|&s| s == 'T'), "still stopped");
    nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while states(pid).contains(&'T') {
        assert!(Instant::now() < deadline, "runs again after SIGCONT");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(tracer_pid(pid), Some(0));
}
