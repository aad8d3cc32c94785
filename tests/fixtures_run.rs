//! Smoke tests of the fixture programs themselves (unprofiled): each starts, prints
//! `ready <pid>`, follows its documented CLI and exits 0. Needs `make fixtures` first.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Fixture, parse_loaded_address, tracer_pid};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a fixture to completion and returns it (for its stdout lines), asserting exit 0.
fn run_ok(name: &str, args: &[&str]) -> Fixture {
    let mut f = Fixture::spawn(name, args);
    let status = f
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("{name} {args:?} did not exit within {EXIT_TIMEOUT:?}"));
    assert!(status.success(), "{name} {args:?} exited with {status}");
    f
}

fn thread_names(f: &Fixture) -> BTreeSet<String> {
    f.threads().into_iter().map(|(_, name)| name).collect()
}

#[test]
fn timed_fixtures_exit_zero_after_seconds() {
    for name in [
        "c_workers",
        "c_workers_fp",
        "c_workers_stripped_buildid",
        "c_workers_stripped_debuglink",
        "deep_recursion",
        "rust_app_legacy",
        "rust_app_v0",
    ] {
        let f = run_ok(name, &["--seconds", "0.3"]);
        drop(f);
    }
}

#[test]
fn c_workers_wall_slices_and_work_modes() {
    run_ok("c_workers", &["--seconds", "0.2", "--wall-slices"]);
    let mut f = run_ok("c_workers", &["--work", "3"]);
    let done = f
        .wait_for_line("done ", Duration::from_secs(1))
        .expect("done line");
    let secs: f64 = done["done ".len()..].parse().expect("elapsed seconds");
    assert!(secs > 0.0 && secs < 20.0, "{done}");
}

#[test]
fn deep_recursion_accepts_a_depth() {
    run_ok("deep_recursion", &["--seconds", "0.1", "--depth", "50"]);
}

#[test]
fn cpp_app_names_its_threads() {
    let mut f = Fixture::spawn("cpp_app", &["--seconds", "1.5", "--churn-rate", "100"]);
    let names = thread_names(&f);
    for want in [
        "cpp_app",
        "acc-int",
        "acc-double",
        "lambda-worker",
        "cv-waiter-0",
        "cv-waiter-1",
        "cv-waiter-2",
        "pipe-reader",
        "churner",
    ] {
        assert!(names.contains(want), "no thread {want:?} in {names:?}");
    }
    let status = f.wait_exit(EXIT_TIMEOUT).expect("cpp_app exits");
    assert!(status.success(), "cpp_app exited with {status}");
}

#[test]
fn rust_apps_name_their_threads() {
    for name in ["rust_app_legacy", "rust_app_v0"] {
        let mut f = Fixture::spawn(name, &["--seconds", "0.5"]);
        let names = thread_names(&f);
        assert!(names.contains("rust-crunch-u64"), "{name}: {names:?}");
        assert!(names.contains("rust-crunch-f64"), "{name}: {names:?}");
        let status = f.wait_exit(EXIT_TIMEOUT).expect("exits");
        assert!(status.success(), "{name} exited with {status}");
    }
}

#[test]
fn busy_threads_counts_and_work() {
    let mut f = Fixture::spawn(
        "busy_threads",
        &["--busy", "2", "--idle", "5", "--seconds", "0.5"],
    );
    let threads = f.threads();
    let busy = threads
        .iter()
        .filter(|(_, n)| n.starts_with("busy-"))
        .count();
    let idle = threads
        .iter()
        .filter(|(_, n)| n.starts_with("idle-"))
        .count();
    assert_eq!((busy, idle, threads.len()), (2, 5, 8), "{threads:?}");
    assert!(f.wait_exit(EXIT_TIMEOUT).expect("exits").success());

    let mut f = run_ok(
        "busy_threads",
        &["--busy", "2", "--idle", "3", "--work", "20"],
    );
    assert!(f.wait_for_line("done ", Duration::from_secs(1)).is_some());
}

#[test]
fn signals_app_selfcheck_passes_unprofiled() {
    let mut f = run_ok("signals_app", &["--seconds", "1"]);
    let lines = f.stdout_lines();
    assert_eq!(lines, vec!["selfcheck ok".to_string()]);
}

#[test]
fn dlopen_app_reuses_the_library_address() {
    let mut f = run_ok("dlopen_app", &["--phase-ms", "50"]);
    let a = f
        .wait_for_line("loaded a ", Duration::from_secs(1))
        .expect("loaded a");
    f.wait_for_line("unloaded a", Duration::from_secs(1))
        .expect("unloaded a");
    let b = f
        .wait_for_line("loaded b ", Duration::from_secs(1))
        .expect("loaded b");
    f.wait_for_line("unloaded b", Duration::from_secs(1))
        .expect("unloaded b");
    let (a, b) = (parse_loaded_address(&a), parse_loaded_address(&b));
    assert!(a.is_some_and(|a| a > 0), "{a:?}");
    assert_eq!(a, b, "libdl_b.so was not mapped where libdl_a.so was");
}

#[test]
fn wait_traced_blocks_until_a_tracer_attaches() {
    use nix::sys::ptrace;
    use nix::unistd::Pid;

    let mut f = Fixture::spawn("c_workers", &["--wait-traced", "--seconds", "0.1"]);
    assert_eq!(tracer_pid(f.pid()), Some(0));
    assert!(
        f.wait_exit(Duration::from_millis(400)).is_none(),
        "c_workers --wait-traced ran without a tracer"
    );
    ptrace::seize(Pid::from_raw(f.pid()), ptrace::Options::empty()).expect("PTRACE_SEIZE");
    // TracerPid names the tracing thread, i.e. this test thread.
    assert_eq!(tracer_pid(f.pid()), Some(nix::unistd::gettid().as_raw()));
    let status = f.wait_exit(EXIT_TIMEOUT).expect("exits once traced");
    assert!(status.success(), "exited with {status}");
}
