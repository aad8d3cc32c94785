//! `profiler`: parse the command line, run, print the summary, choose the exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use profiler::cli::{Cli, Command};
use profiler::{config, session};

/// Keep only the capabilities the agent needs (see `os::permissions::KEEP`).
fn drop_privileges(verbose: bool) {
    match profiler::os::permissions::drop_privileges() {
        Ok(kept) if verbose => err(&format!("profiler: capabilities kept: {kept:?}\n")),
        Ok(_) => {}
        Err(e) => err(&format!(
            "profiler: warning: could not drop capabilities: {e}\n"
        )),
    }
}

/// Write to stdout or stderr, ignoring a reader that went away (`profiler doctor | head`):
/// the work must not fail, nor a traced target be left behind, over a closed pipe.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn err(text: &str) {
    profiler::to_stderr(text);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGINT, SIGTERM, SIGHUP and SIGCHLD are taken synchronously by the sampler thread;
    // block them here so every thread inherits the mask.
    if let Err(e) = profiler::os::signals::block_agent_signals() {
        err(&format!("profiler: cannot set up signal handling: {e}\n"));
        return ExitCode::from(2);
    }
    // Two /proc files stay open per traced thread.
    profiler::os::proc::raise_open_files_limit();
    profiler::os::proc::fix_malloc_threshold();
    let result = match cli.command {
        Command::Attach(args) => config::AttachConfig::from_args(&args).and_then(|mut cfg| {
            cfg.status_line = profiler::os::term::stderr_is_terminal();
            cfg.open_outputs()?;
            drop_privileges(cfg.verbose);
            session::run_attach(&cfg, &mut |m| err(&format!("profiler: {m}\n")), &mut |s| {
                err(&s.to_string())
            })
        }),
        Command::Record(args) => {
            let code = profiler::record::run(
                &args,
                &mut |m| err(&format!("profiler: {m}\n")),
                &mut |s| err(&s.to_string()),
                drop_privileges,
            );
            match code {
                Ok(code) => return ExitCode::from(code),
                Err(e) => Err(e),
            }
        }
        Command::Top(args) => config::AttachConfig::for_top(&args).and_then(|mut cfg| {
            cfg.open_outputs()?;
            drop_privileges(cfg.verbose);
            session::run_attach(&cfg, &mut |m| err(&format!("profiler: {m}\n")), &mut |s| {
                err(&s.to_string())
            })
        }),
        Command::Dump(args) => {
            drop_privileges(false);
            profiler::dump::run(args.pid, &args.debug_dir).and_then(|d| {
                if args.json {
                    out(&serde_json::to_string_pretty(&d)?);
                    out("\n");
                } else {
                    out(&d.to_string());
                }
                Ok(())
            })
        }
        Command::Doctor(args) => profiler::doctor::run(args.pid, &args.debug_dir).map(|report| {
            out(&report.to_string());
            if !report.can_attach() {
                std::process::exit(1);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            err(&format!("profiler: error: {e:#}\n"));
            ExitCode::from(1)
        }
    }
}
