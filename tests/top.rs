//! `profiler top`: live tables of the hottest functions; plain text when standard output
//! is not a terminal, the screen redrawn in place when it is.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Fixture;

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn top(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_profiler"))
        .arg("top")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "top did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A row: %own, %total, function (with the thread in front, per thread).
type Row = (f64, f64, String);

/// The tables of the output: each a header and its rows.
fn tables(text: &str) -> Vec<(String, Vec<Row>)> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("profiler top: ") {
            out.push((line.to_string(), Vec::new()));
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() >= 5
            && let (Some(o), Some(t)) = (w[0].strip_suffix('%'), w[1].strip_suffix('%'))
            && let (Ok(o), Ok(t)) = (o.parse::<f64>(), t.parse::<f64>())
        {
            out.last_mut().unwrap().1.push((o, t, w[4..].join(" ")));
        }
    }
    out
}

fn row<'a>(t: &'a [Row], f: &str) -> Option<&'a Row> {
    t.iter()
        .find(|r| r.2 == f || r.2.starts_with(&format!("{f} (")))
}

#[test]
fn plain_text_tables_when_not_a_terminal() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let o = top(&["-p", &pid, "-d", "2.2", "--interval", "0.5", "-F", "200"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains('\x1b'), "no terminal codes: {text:?}");
    let t = tables(&text);
    // One table per interval, and the whole session's at the end.
    assert!(t.len() >= 4, "{} tables\n{text}", t.len());
    let (last_head, last) = t.last().unwrap();
    assert!(last_head.contains("samples in all"), "{last_head}");
    // c_workers: worker_direct (with its inlined mix_bits) half the time, main always.
    let direct = row(last, "worker_direct").unwrap_or_else(|| panic!("{text}"));
    assert!((direct.1 - 50.0).abs() <= 10.0, "{direct:?}\n{text}");
    assert!(row(last, "main").unwrap().1 >= 99.0, "{text}");
    let leaf = row(last, "mix_bits").unwrap();
    assert_eq!(leaf.0, leaf.1, "a leaf's own share is its total share");
    for (head, rows) in &t[..t.len() - 1] {
        assert!(head.contains("of 1 threads in the last 0."), "{head}");
        assert!(!rows.is_empty(), "{head}");
        // Rows sorted by their own share, highest first.
        assert!(rows.windows(2).all(|w| w[0].0 >= w[1].0), "{rows:?}");
    }
}

#[test]
fn by_thread_and_on_a_terminal() {
    let _l = live();
    let fx = Fixture::spawn("busy_threads", &["--busy", "2", "--idle", "1"]);
    let pid = fx.pid().to_string();
    let o = top(&["-p", &pid, "-d", "1.2", "--interval", "0.5", "--by-thread"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("THREAD"), "{text}");
    let last = tables(&text).pop().unwrap().1;
    for t in ["busy-0", "busy-1"] {
        assert!(
            last.iter()
                .any(|r| r.2.starts_with(t) && r.2.ends_with("busy_spin (busy_threads.c)")),
            "{t}\n{text}"
        );
    }
    assert!(!last.iter().any(|r| r.2.starts_with("idle-0")), "{text}");
    // --idle: the sleeping thread shows where it waits.
    let o = top(&[
        "-p",
        &pid,
        "-d",
        "0.8",
        "--interval",
        "0.5",
        "--by-thread",
        "--idle",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let last = tables(&text).pop().unwrap().1;
    assert!(
        last.iter()
            .any(|r| r.2.starts_with("idle-0") && r.2.contains("idle_sleep")),
        "{text}"
    );
    // On a terminal (`script` gives one), the screen is cleared and redrawn.
    if common::formats::tool("script").is_none() {
        eprintln!("SKIPPED: script (util-linux) not found");
        return;
    }
    let cmd = format!(
        "{} top -p {pid} -d 1.2 --interval 0.5",
        env!("CARGO_BIN_EXE_profiler")
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.matches("\x1b[H\x1b[2J").count() >= 2, "{t:?}");
    assert!(t.contains("busy_spin"), "{t:?}");
}
