//! `profiler record -- PROGRAM ARGS...`: start a program under the agent, profile it from
//! its first instruction until it exits (or `--duration` ends), write the outputs, and
//! exit with the program's exit code.
//!
//! The program is forked stopped before its `execve` (`os::launch`) before the agent gives
//! up its privileges, so it runs with the caller's; the session seizes it and lets it go
//! (`SamplerConfig::launched`). It shares the agent's terminal and process group: a
//! Ctrl-C reaches it directly, as from a shell, and the agent goes on sampling until it
//! exits.

use anyhow::{Result, bail};

use crate::cli::RecordArgs;
use crate::config::{AttachConfig, Target};
use crate::os::launch;
use crate::session;
use crate::summary::Summary;

/// Run `profiler record`. `drop_privileges` is called once the program is forked.
/// Returns the exit code for the agent: the program's (a shell's 127/126 when it could
/// not be started).
pub fn run(
    args: &RecordArgs,
    progress: &mut dyn FnMut(&str),
    on_summary: &mut dyn FnMut(&Summary),
    drop_privileges: impl FnOnce(bool),
) -> Result<u8> {
    let mut cfg = AttachConfig::for_record(&args.attach, &args.command)?;
    cfg.status_line = crate::os::term::stderr_is_terminal();
    cfg.open_outputs()?;
    let program = &args.command[0];
    let path = match launch::resolve(program) {
        Ok(p) => p,
        Err(e) => {
            progress(&e.to_string());
            return Ok(e.exit_code());
        }
    };
    let mut child = match launch::spawn_stopped(&path, &args.command) {
        Ok(c) => c,
        Err(e) => {
            progress(&e.to_string());
            return Ok(e.exit_code());
        }
    };
    drop_privileges(cfg.verbose);
    cfg.pid = child.pid;
    cfg.target = Target::Pid(child.pid);
    session::say_where_outputs_go(&cfg, progress);
    // On an error here the child is killed (it never ran): `child` is dropped.
    let summary = session::attach(&cfg, progress)?;
    child.release();
    on_summary(&summary);
    let status = match summary.sampler.exit_status {
        Some(s) => s,
        None => {
            progress(&format!(
                "sampling ended; waiting for {program} (pid {}) to exit",
                child.pid
            ));
            child.wait()?
        }
    };
    if let Some(e) = child.exec_error() {
        progress(&format!("cannot run {program}: {e}"));
        return Ok(if e.raw_os_error() == Some(libc::EACCES) {
            126
        } else {
            127
        });
    }
    let code = launch::exit_code(status);
    progress(&format!("{program} exited with code {code}"));
    if !summary.failures.is_empty() {
        let why = format!(
            "{} output(s) not written: {}",
            summary.failures.len(),
            summary.failures.join("; ")
        );
        if code == 0 {
            bail!(why);
        }
        progress(&why);
    }
    Ok(code)
}
