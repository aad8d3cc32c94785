//! The tracer against a real child process: attach, interrupt and resume many times,
//! respect a user's SIGSTOP/SIGCONT, pass signals on, and detach leaving the child running
//! and untraced. One test function: the tracer reaps children with waitpid(-1), which must
//! not race with other tests' children in the same process.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use profiler::os::proc;
use profiler::os::ptrace::{Missed, Tracer};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

fn wait_state(pid: i32, want: &[char], tracer: &mut Tracer) -> char {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tracer.drain(|_, _| {});
        let s = state(pid);
        if want.contains(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tracer_lifecycle() {
    profiler::os::signals::block_agent_signals().unwrap();
    // A busy shell loop that also counts SIGUSR1s into a file when asked.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("usr1");
    let script = format!(
        "n=0; trap 'n=$((n+1)); echo $n > {}' USR1; while :; do :; done",
        out.display()
    );
    let child = Kill(
        Command::new("/bin/bash")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id() as i32;
    std::thread::sleep(Duration::from_millis(100));

    let mut tracer = Tracer::attach(pid).expect("attach to own child");
    assert!(proc::tracer_pid(pid).is_some(), "traced by this test");
    assert_eq!(tracer.threads(), vec![pid]);

    // Many interrupt/resume cycles: registers are real each time.
    let mut ips = std::collections::HashSet::new();
    for _ in 0..200 {
        let regs = tracer.sample(pid, |r| *r).expect("sample");
        assert!(regs.sp() != 0 && regs.ip() != 0);
        ips.insert(regs.ip());
        std::thread::sleep(Duration::from_micros(500));
    }
    assert!(ips.len() > 1, "the thread runs between samples");
    assert_eq!(
        wait_state(pid, &['R'], &mut tracer),
        'R',
        "running after samples"
    );

    // A capture that panics while the thread is stopped (between the register read and
    // the resume) must not leave it stopped: the tracer resumes it on the way out.
    for _ in 0..20 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), _> = tracer.sample(pid, |_| panic!("injected panic in a capture"));
        }));
        assert!(r.is_err(), "the injected panic reached the caller");
        std::thread::sleep(Duration::from_millis(2));
        let s = state(pid);
        assert_ne!(s, 't', "thread left stopped after a panicking capture");
    }
    assert_eq!(wait_state(pid, &['R'], &mut tracer), 'R');

    // A signal meant for the target reaches it (its handler runs).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&out)
        .map(|s| s.trim().to_string())
        .ok()
        .as_deref()
        != Some("1")
    {
        tracer.drain(|_, _| {});
        let _ = tracer.sample(pid, |_| ());
        assert!(
            Instant::now() < deadline,
            "SIGUSR1 never reached the target"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A user's SIGSTOP keeps the target stopped; sampling does not resume it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let s = wait_state(pid, &['T', 't'], &mut tracer);
    assert!(s == 'T' || s == 't', "stopped by SIGSTOP, state {s}");
    for _ in 0..10 {
        tracer.drain(|_, _| {});
        assert_eq!(tracer.sample(pid, |_| ()).err(), Some(Missed::GroupStopped));
    }
    std::thread::sleep(Duration::from_millis(50));
    let s = state(pid);
    assert!(s == 'T' || s == 't', "still stopped, state {s}");
    // SIGCONT resumes it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tracer.drain(|_, _| {});
        if tracer.sample(pid, |_| ()).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never resumed after SIGCONT");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wait_state(pid, &['R'], &mut tracer), 'R');

    // Detach: untraced and running.
    drop(tracer);
    assert_eq!(proc::tracer_pid(pid), None);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(pid), 'R');

    // Detaching while the target is group-stopped leaves it stopped, untraced.
    let mut tracer = Tracer::attach(pid).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let s = wait_state(pid, &['T', 't'], &mut tracer);
    assert!(s == 'T' || s == 't');
    drop(tracer);
    assert_eq!(proc::tracer_pid(pid), None);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(pid), 'T', "a user's stop survives the detach");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(pid), 'R');
}
