//! Starting a program for `profiler record`: forked, stopped (SIGSTOP) before its
//! `execve`, so the tracer can seize it and see its very first instruction; its standard
//! input, output and error, environment, working directory and process group are the
//! agent's. The agent's blocked signals and Rust's ignored SIGPIPE are reset in the child
//! first, so the program starts as a shell would start it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid as NixPid;

use crate::types::Pid;

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No such program on the PATH (a shell's exit code 127).
    #[error("{0}: command not found")]
    NotFound(String),
    /// Found but not executable (a shell's exit code 126).
    #[error("{0}: permission denied")]
    NotExecutable(String),
    /// fork or the wait for the stop failed.
    #[error("starting {0}: {1}")]
    Os(String, io::Error),
}

impl LaunchError {
    /// The exit code a shell gives this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::NotFound(_) => 127,
            LaunchError::NotExecutable(_) => 126,
            LaunchError::Os(..) => 1,
        }
    }
}

/// A program forked and stopped before its `execve`. Killed (and reaped) when dropped
/// before [`Launched::release`], so a failure of the agent between the fork and the
/// seize never leaves a stopped child behind.
#[derive(Debug)]
pub struct Launched {
    /// Its pid.
    pub pid: Pid,
    /// Read end of the pipe on which the child reports a failed `execve` (4 bytes of
    /// errno); end of file means the exec happened.
    exec_error: std::fs::File,
    released: bool,
}

/// Find `program` as `execvp` would: a name with a `/` as it is, else the first
/// executable file of that name in `$PATH`.
pub fn resolve(program: &str) -> Result<PathBuf, LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(LaunchError::NotExecutable(program.to_string()))
        } else {
            Err(LaunchError::NotFound(program.to_string()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found_not_executable = false;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if executable(&p) {
            return Ok(p);
        }
        found_not_executable |= p.is_file();
    }
    Err(if found_not_executable {
        LaunchError::NotExecutable(program.to_string())
    } else {
        LaunchError::NotFound(program.to_string())
    })
}

/// Fork `argv` (the program resolved with [`resolve`], then its arguments), stopped
/// before its `execve`; returns once the child has stopped.
pub fn spawn_stopped(path: &Path, argv: &[String]) -> Result<Launched, LaunchError> {
    let name = argv.first().cloned().unwrap_or_default();
    let os = |e: io::Error| LaunchError::Os(name.clone(), e);
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| os(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| os(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut cptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    cptrs.push(std::ptr::null());
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| os(e.into()))?;
    // SAFETY: the child runs only async-signal-safe calls (sigprocmask, signal, raise,
    // execv, write, _exit) on memory prepared before the fork (`cpath`, `cptrs`, the pipe),
    // as is required after a fork in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; every pointer is valid in the child's copy of the memory, and
        // `_exit` ends the child whatever happens.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGSTOP);
            libc::execv(cpath.as_ptr(), cptrs.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&write_end),
                bytes.as_ptr().cast(),
                bytes.len(),
            );
            libc::_exit(127);
        }
    }
    drop(write_end);
    let mut launched = Launched {
        pid,
        exec_error: std::fs::File::from(read_end),
        released: false,
    };
    // Wait for its stop (the SIGSTOP it raised before the exec).
    loop {
        match waitpid(NixPid::from_raw(pid), Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => return Ok(launched),
            Ok(WaitStatus::Stopped(_, _)) => continue,
            Ok(other) => {
                launched.released = true;
                return Err(os(io::Error::other(format!(
                    "the child ended before its exec: {other:?}"
                ))));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(os(e.into())),
        }
    }
}

impl Launched {
    /// The child is in the agent's hands now (seized): no longer killed on drop.
    pub fn release(&mut self) {
        self.released = true;
    }

    /// The errno of a failed `execve`, once the child is gone; None when the exec happened.
    pub fn exec_error(&mut self) -> Option<io::Error> {
        use std::io::Read;
        let mut b = [0u8; 4];
        match self.exec_error.read(&mut b) {
            Ok(4) => Some(io::Error::from_raw_os_error(i32::from_ne_bytes(b))),
            _ => None,
        }
    }

    /// Wait for the program to exit, passing SIGTERM and SIGHUP sent to the agent on to
    /// it (SIGINT from a terminal reaches it directly); returns its wait status.
    pub fn wait(&mut self) -> io::Result<i32> {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer for the call.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                return Ok(status);
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
            if let super::signals::Wake::Stop(sig) =
                super::signals::wait(Duration::from_millis(100))
                && matches!(sig, Signal::SIGTERM | Signal::SIGHUP)
            {
                super::signals::send(self.pid, sig);
            }
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if !self.released {
            super::signals::send(self.pid, Signal::SIGKILL);
            let _ = waitpid(NixPid::from_raw(self.pid), None);
        }
    }
}

/// The exit code a shell reports for a wait status: the program's own, or 128 + the
/// signal that ended it.
pub fn exit_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_a_shell() {
        assert!(resolve("sh").unwrap().is_absolute());
        assert!(matches!(
            resolve("no-such-program-here"),
            Err(LaunchError::NotFound(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plain");
        std::fs::write(&f, "x").unwrap();
        let e = resolve(f.to_str().unwrap()).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
        assert_eq!(resolve("/no/such/file").unwrap_err().exit_code(), 127);
    }

    #[test]
    fn exit_codes_as_a_shell_gives_them() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(0), 0);
    }
}
