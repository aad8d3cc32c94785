//! The terminal the agent writes to: whether a stream is one, and its size.

use std::io::IsTerminal;

/// True when standard error is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// True when standard output is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Columns and rows of the terminal on file descriptor `fd`, None when it is not one.
fn size_of(fd: i32) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which is valid and
    // exclusively borrowed for the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Columns and rows of the terminal on standard output.
pub fn stdout_size() -> Option<(u16, u16)> {
    size_of(libc::STDOUT_FILENO)
}

/// Columns of the terminal on standard error.
pub fn stderr_columns() -> Option<u16> {
    size_of(libc::STDERR_FILENO).map(|(c, _)| c)
}
