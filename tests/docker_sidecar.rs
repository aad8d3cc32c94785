//! The sidecar in a real container engine. Images are built from this machine's files
//! (`scripts/rootfs-image.sh`: the program and the libraries `ldd` lists, imported with
//! `docker import`; no registry), one for the agent (this test build's binary, a non-root
//! user, file capabilities) and one per target. Each test runs a target container and the
//! agent in a second container sharing its PID namespace (`--pid=container:<target>`,
//! Docker's form of Kubernetes' `shareProcessNamespace`), with Docker's default seccomp
//! profile and default capabilities plus only what the case names.
//!
//! Skipped, with a line saying so, where no Docker daemon answers.

mod common;
#[path = "common/sentry_server.rs"]
mod sentry_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::fixture_path;
use sentry_server::{KEY, ServerState, TestServer, wait_for};

/// The uid the agent's image runs as.
const AGENT_UID: u32 = 10001;

static DOCKER: Mutex<()> = Mutex::new(());

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// True when a Docker daemon answers; otherwise says why the test is skipped.
fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skip("no Docker daemon answers (`docker info` failed)");
    }
    ok
}

/// The start of every test: None (the test is skipped, with a line saying why) when no
/// Docker daemon answers; else the lock that keeps this binary's tests one at a time.
fn begin() -> Option<std::sync::MutexGuard<'static, ()>> {
    docker_available().then(|| DOCKER.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A unique name for this test process's containers and networks.
fn unique(what: &str) -> String {
    format!("profiler-test-{what}-{}", std::process::id())
}

/// An image name for files whose contents decide the image: the same files give the same
/// tag, so test runs reuse an image instead of piling up new ones.
fn image_tag(what: &str, files: &[&Path]) -> String {
    let mut h = crc32fast::Hasher::new();
    for f in files {
        h.update(&std::fs::read(f).unwrap());
    }
    format!("profiler-test-{what}:{:08x}", h.finalize())
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", tag]).status.success()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build an image with `scripts/rootfs-image.sh`.
fn build_image(args: &[String]) -> String {
    let o = Command::new(repo().join("scripts/rootfs-image.sh"))
        .args(args)
        .output()
        .expect("run scripts/rootfs-image.sh");
    assert!(
        o.status.success(),
        "rootfs-image.sh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The agent's image, as `make image` builds it (`scripts/agent-image.sh`), from this test
/// build's binary.
fn agent_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bin = Path::new(env!("CARGO_BIN_EXE_profiler"));
        let script = repo().join("scripts/agent-image.sh");
        let tag = image_tag(
            "agent",
            &[bin, &script, &repo().join("scripts/rootfs-image.sh")],
        );
        if !image_exists(&tag) {
            let o = Command::new(&script).arg(bin).arg(&tag).output().unwrap();
            assert!(
                o.status.success(),
                "agent-image.sh: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        tag
    })
}

/// A target image: the stripped fixture, its debug file only inside the image (at its
/// build-id path under /usr/lib/debug), running as an ordinary user.
fn target_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let debug = std::fs::read_dir(fixture_path("debug").join(".build-id"))
            .unwrap()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .map(|e| e.path())
            .find(|p| {
                // The debug file of the stripped build (c_workers has one too).
                let id = build_id(&fixture_path("c_workers_stripped_buildid"));
                let name = format!(
                    "{}/{}",
                    p.parent().unwrap().file_name().unwrap().to_string_lossy(),
                    p.file_stem().unwrap().to_string_lossy()
                );
                name.replace('/', "") == id
            })
            .expect("the stripped fixture's debug file");
        let rel = debug
            .strip_prefix(fixture_path("debug"))
            .unwrap()
            .to_path_buf();
        let tag = image_tag(
            "target",
            &[&fixture_path("c_workers_stripped_buildid"), &debug],
        );
        if image_exists(&tag) {
            return tag;
        }
        build_image(&[
            "--user".into(),
            "1000:1000".into(),
            "--entrypoint".into(),
            "/app/worker".into(),
            tag,
            format!(
                "{}:/app/worker",
                fixture_path("c_workers_stripped_buildid").display()
            ),
            format!("{}:/usr/lib/debug/{}", debug.display(), rel.display()),
        ])
    })
}

fn build_id(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    let facts = profiler::elf::facts(&data).unwrap();
    profiler::elf::hex(&facts.build_id.unwrap())
}

/// A container removed (with force) when dropped.
struct Container(String);

impl Container {
    fn run(name: &str, args: &[&str]) -> Container {
        let _ = docker(&["rm", "-f", name]);
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        docker_ok(&all);
        Container(name.to_string())
    }

    /// The container's main process as this machine's PID namespace sees it.
    fn host_pid(&self) -> i32 {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.0])
            .parse()
            .unwrap()
    }

    fn logs(&self) -> String {
        let o = docker(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Wait for the container to exit; its exit code.
    fn wait(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.0]);
            if running == "false" {
                return docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &self.0])
                    .parse()
                    .unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{} still running: {}",
                self.0,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A user-defined Docker network removed when dropped; the test's capture server listens
/// on its gateway address, which containers on it reach.
struct Network {
    name: String,
    gateway: String,
}

impl Network {
    fn create(name: &str) -> Network {
        let _ = docker(&["network", "rm", name]);
        docker_ok(&["network", "create", name]);
        let gateway = docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            name,
        ]);
        Network {
            name: name.to_string(),
            gateway,
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A directory the agent's user may write, mounted into its container.
fn agent_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    nix::unistd::chown(
        d.path(),
        Some(nix::unistd::Uid::from_raw(AGENT_UID)),
        Some(nix::unistd::Gid::from_raw(AGENT_UID)),
    )
    .unwrap();
    d
}

/// CLOCK_MONOTONIC in seconds (the clock the agent's first-sample line gives).
fn monotonic() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

fn tracer_of(pid: i32) -> i32 {
    common::tracer_pid(pid).unwrap_or(0)
}

fn state_of(pid: i32) -> char {
    profiler::os::proc::stat(pid).map_or('?', |s| s.state)
}

#[test]
fn sidecar_names_the_target_and_delivers_chunks_over_a_docker_network() {
    let Some(_l) = begin() else {
        return;
    };
    let net = Network::create(&unique("net"));
    let state = Arc::new(ServerState::default());
    let (_server, port) = TestServer::start_on(&net.gateway, 0, Arc::clone(&state));
    let target = Container::run(&unique("t1"), &[target_image()]);
    let out = agent_dir();
    let volume = format!("{}:/out", out.path().display());
    let dsn = format!(
        "http://{KEY}@{}:{port}/{}",
        net.gateway,
        sentry_server::PROJECT
    );
    let started = monotonic();
    let agent = Container::run(
        &unique("a1"),
        &[
            "--pid",
            &format!("container:{}", target.0),
            "--cap-add",
            "SYS_PTRACE",
            "--network",
            &net.name,
            "-v",
            &volume,
            agent_image(),
            "attach",
            "--process-name",
            "worker",
            "-d",
            "4",
            "--chunk-seconds",
            "2",
            "--dsn",
            &dsn,
            "--spool-dir",
            "/out/spool",
            "-o",
            "/out/p.folded",
            "-v",
        ],
    );
    assert_eq!(agent.wait(Duration::from_secs(60)), 0, "{}", agent.logs());
    let logs = agent.logs();
    eprintln!("{logs}");
    // `docker run` to the first sample, on the clock containers share with this machine.
    let first = logs
        .lines()
        .find_map(|l| {
            l.split("CLOCK_MONOTONIC ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .expect("the agent reports its first sample with -v");
    println!(
        "agent container: docker run to first sample {:.0} ms",
        (first - started) * 1e3
    );
    let folded = std::fs::read_to_string(out.path().join("p.folded")).unwrap();
    let total: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(total >= 200, "4 s at 100 Hz: {total} samples\n{folded}");
    for f in [
        "worker_direct",
        "worker_indirect",
        "worker_recursive",
        "mix_bits",
    ] {
        assert!(
            folded.contains(f),
            "{f} named from the debug file inside the target's image:\n{folded}"
        );
    }
    let complete: u64 = folded
        .lines()
        .filter(|l| {
            l.contains(";_start;") && !l.contains("[truncated]") && !l.contains("[unknown]")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(
        complete * 100 >= total * 99,
        "{complete} of {total} stacks complete"
    );
    wait_for("chunks at the server", Duration::from_secs(10), || {
        !state.accepted().is_empty()
    });
    state.assert_no_errors();
    let chunks = state.accepted();
    let samples: usize = chunks.iter().map(|c| c.samples).sum();
    assert!(
        samples >= 200,
        "{samples} samples in {} chunks",
        chunks.len()
    );
    let functions: Vec<String> = chunks
        .iter()
        .flat_map(|c| {
            c.payload["profile"]["frames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect();
    assert!(
        functions.iter().any(|f| f == "worker_recursive"),
        "{functions:?}"
    );
    assert_eq!(
        tracer_of(target.host_pid()),
        0,
        "the target runs on untraced"
    );
}

#[test]
fn without_sys_ptrace_the_refusal_names_the_flag() {
    let Some(_l) = begin() else {
        return;
    };
    let target = Container::run(&unique("t2"), &[target_image()]);
    let pid_ns = format!("container:{}", target.0);
    let o = docker(&[
        "run",
        "--rm",
        "--pid",
        &pid_ns,
        agent_image(),
        "attach",
        "--pid",
        "1",
        "-d",
        "1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--cap-add=SYS_PTRACE") && err.contains("SYS_PTRACE"),
        "names the flag to add: {err}"
    );
    let o = docker(&[
        "run",
        "--rm",
        "--pid",
        &pid_ns,
        agent_image(),
        "doctor",
        "--pid",
        "1",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "doctor exits non-zero: {text}");
    assert!(
        text.contains("--cap-add=SYS_PTRACE"),
        "doctor says the same: {text}"
    );
    assert_eq!(tracer_of(target.host_pid()), 0);
}

#[test]
fn a_stopped_agent_leaves_the_target_running_and_the_next_one_sends_the_spool() {
    let Some(_l) = begin() else {
        return;
    };
    let net = Network::create(&unique("net3"));
    let target = Container::run(&unique("t3"), &[target_image()]);
    let host_pid = target.host_pid();
    let spool = agent_dir();
    let volume = format!("{}:/spool", spool.path().display());
    let pid_ns = format!("container:{}", target.0);
    // Sentry is down: nothing listens on the gateway's port yet.
    let port = sentry_server::closed_port();
    let dsn = format!(
        "http://{KEY}@{}:{port}/{}",
        net.gateway,
        sentry_server::PROJECT
    );
    let agent_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--pid",
            pid_ns.as_str(),
            "--cap-add",
            "SYS_PTRACE",
            "--network",
            net.name.as_str(),
            "-v",
            volume.as_str(),
            agent_image(),
            "attach",
            "--pid",
            "1",
            "--chunk-seconds",
            "1",
            "--flush-timeout",
            "1",
            "--dsn",
            dsn.as_str(),
            "--spool-dir",
            "/spool",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for (how, signal) in [("stop", &["stop", "-t", "10"][..]), ("kill", &["kill"][..])] {
        let args = agent_args(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Container::run(&unique(&format!("a3{how}")), &args);
        wait_for("the agent to attach", Duration::from_secs(20), || {
            tracer_of(host_pid) != 0
        });
        // Let it make (and fail to send) a few chunks.
        std::thread::sleep(Duration::from_secs(3));
        let mut cmd = signal.to_vec();
        cmd.push(&agent.0);
        docker_ok(&cmd);
        wait_for("the target to be untraced", Duration::from_secs(20), || {
            tracer_of(host_pid) == 0
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            matches!(state_of(host_pid), 'R' | 'S'),
            "after docker {how} the target runs on: state {}",
            state_of(host_pid)
        );
        drop(agent);
    }
    let spooled = sentry_server::spool_files(spool.path());
    assert!(
        !spooled.is_empty(),
        "chunks were spooled while Sentry was down"
    );
    // Sentry is back; the next agent container sends what the others left.
    let state = Arc::new(ServerState::default());
    let (_server, _) = TestServer::start_on(&net.gateway, port, Arc::clone(&state));
    let args = agent_args(&["-d", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Container::run(&unique("a3next"), &args);
    assert_eq!(agent.wait(Duration::from_secs(60)), 0, "{}", agent.logs());
    state.assert_no_errors();
    let accepted = state.accepted_ids();
    for f in &spooled {
        let id = sentry_server::spool_chunk_id(f);
        assert!(
            accepted.contains(&id),
            "spooled chunk {id} sent by the next agent: {accepted:?}\n{}",
            agent.logs()
        );
    }
}

/// A CPython service image: Debian's interpreter with its standard library, running
/// `fixtures/py/docker_service.py` as uid 1000. None without /usr/bin/python3.
fn python_image() -> Option<&'static str> {
    static IMAGE: OnceLock<Option<String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let python = std::fs::canonicalize("/usr/bin/python3").ok()?;
            let version = python.file_name()?.to_string_lossy().to_string();
            let stdlib = PathBuf::from("/usr/lib").join(&version);
            if !stdlib.is_dir() {
                return None;
            }
            let script = repo().join("fixtures/py/docker_service.py");
            let tag = image_tag("python", &[&python, &script]);
            if image_exists(&tag) {
                return Some(tag);
            }
            Some(build_image(&[
                "--user".into(),
                "1000:1000".into(),
                "--dir".into(),
                format!("{}:{}", stdlib.display(), stdlib.display()),
                "--entrypoint".into(),
                "/usr/bin/python3".into(),
                "--cmd".into(),
                "[\"/app/service.py\"]".into(),
                tag,
                format!("{}:/usr/bin/python3", python.display()),
                format!("{}:/app/service.py", script.display()),
            ]))
        })
        .as_deref()
}

#[test]
fn sidecar_profiles_a_python_service() {
    let Some(_l) = begin() else {
        return;
    };
    let Some(image) = python_image() else {
        common::skip("no /usr/bin/python3 with its standard library");
        return;
    };
    let target = Container::run(&unique("py"), &[image]);
    wait_for("the service to start", Duration::from_secs(20), || {
        target.logs().contains("ready")
    });
    let out = agent_dir();
    let volume = format!("{}:/out", out.path().display());
    let o = docker(&[
        "run",
        "--rm",
        "--pid",
        &format!("container:{}", target.0),
        "--cap-add",
        "SYS_PTRACE",
        "-v",
        &volume,
        agent_image(),
        "attach",
        "--pid",
        "1",
        "-d",
        "2",
        "-o",
        "/out/p.folded",
        "-o",
        "/out/env/",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let folded = std::fs::read_to_string(out.path().join("p.folded")).unwrap();
    let count = |l: &str| -> u64 {
        l.rsplit_once(' ')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    };
    let total: u64 = folded.lines().map(count).sum();
    let incomplete: u64 = folded
        .lines()
        .filter(|l| l.contains("[unknown]") || l.contains("[truncated]"))
        .map(count)
        .sum();
    assert!(total >= 200, "{total} samples:\n{folded}");
    assert!(
        incomplete * 100 <= total,
        "{incomplete} of {total} incomplete:\n{folded}"
    );
    // The service's Python functions, read through the interpreter found in the service's
    // image, in place of its eval-loop frames, under the worker thread's root.
    assert!(
        folded.lines().any(|l| l.contains("__clone")
            && l.contains("handle_request (service.py:")
            && l.contains("checksum (service.py:")
            && !l.contains("_PyEval_EvalFrameDefault")),
        "{folded}"
    );
    assert!(
        err.contains("Python frames merged with native frames"),
        "{err}"
    );
    let envelopes = std::fs::read_dir(out.path().join("env")).unwrap().count();
    assert!(envelopes >= 1, "a chunk envelope written");
    assert_eq!(tracer_of(target.host_pid()), 0);
}

#[test]
fn sampler_choice_under_docker_seccomp() {
    let Some(_l) = begin() else {
        return;
    };
    let target = Container::run(&unique("t5"), &[target_image()]);
    let pid_ns = format!("container:{}", target.0);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--pid", &pid_ns, "--cap-add", "SYS_PTRACE"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[agent_image(), "attach", "--pid", "1", "-d", "1"]);
        let o = docker(&args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        err
    };
    // Docker's default seccomp profile refuses perf_event_open: ptrace, and the reason.
    let err = run(&[]);
    assert!(
        err.contains("sampler: ptrace") && err.contains("perf_event_open not used: not permitted"),
        "{err}"
    );
    assert!(
        err.contains("seccomp"),
        "the filter is named as a possible cause: {err}"
    );
    // A profile that allows it: the perf source runs (ptrace access to the target is what
    // kernel.perf_event_paranoid 2 asks for sampling another user's process).
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("seccomp.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let err = run(&["--security-opt", &opt]);
    assert!(err.contains("sampler: perf_event_open"), "{err}");
    assert!(err.contains("100.0% of stacks reached their root"), "{err}");
    assert_eq!(
        tracer_of(target.host_pid()),
        0,
        "the perf source never traces"
    );
}

/// A container that only holds a PID namespace for others to join, as the pause container
/// of a Kubernetes pod does (`shareProcessNamespace: true`).
fn pod_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let sleep = which("sleep");
        let tag = image_tag("pod", &[&sleep]);
        if image_exists(&tag) {
            return tag;
        }
        build_image(&[
            "--entrypoint".into(),
            "/bin/sleep".into(),
            "--cmd".into(),
            "[\"infinity\"]".into(),
            tag,
            format!("{}:/bin/sleep", sleep.display()),
        ])
    })
}

fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH"))
}

#[test]
fn process_name_follows_a_restarted_target() {
    let Some(_l) = begin() else {
        return;
    };
    // Target and agent share the pod's PID namespace, so the target can restart (get a new
    // pid) while the agent runs on.
    let pod = Container::run(&unique("pod"), &[pod_image()]);
    let pid_ns = format!("container:{}", pod.0);
    let target = Container::run(&unique("t4"), &["--pid", &pid_ns, target_image()]);
    let first = target.host_pid();
    let agent = Container::run(
        &unique("a4"),
        &[
            "--pid",
            &pid_ns,
            "--cap-add",
            "SYS_PTRACE",
            agent_image(),
            "attach",
            "--process-name",
            "worker",
        ],
    );
    wait_for("the agent to attach", Duration::from_secs(20), || {
        tracer_of(first) != 0
    });
    docker_ok(&["restart", "-t", "1", &target.0]);
    let second = target.host_pid();
    assert_ne!(first, second, "the restarted target has a new pid");
    wait_for(
        "the agent to attach to the restarted target",
        Duration::from_secs(20),
        || tracer_of(second) != 0,
    );
    // The seize comes just before the line that reports it.
    wait_for(
        "the second attach in the log",
        Duration::from_secs(5),
        || agent.logs().matches("attached to").count() >= 2,
    );
    let logs = agent.logs();
    assert!(
        logs.contains("exited; writing what was collected"),
        "{logs}"
    );
}
