//! `profiler`: parse the command line, run, print the summary, choose the exit code.

use std::process::ExitCode;

use clap::Parser;
use profiler::app;
use profiler::cli::{Cli, Command};

/// Keep only the capabilities the agent needs (see `os::permissions::KEEP`).
fn drop_privileges(verbose: bool) {
    match profiler::os::permissions::drop_privileges() {
        Ok(kept) if verbose => eprintln!("profiler: capabilities kept: {kept:?}"),
        Ok(_) => {}
        Err(e) => eprintln!("profiler: warning: could not drop capabilities: {e}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGINT, SIGTERM, SIGHUP and SIGCHLD are taken synchronously by the sampler thread;
    // block them here so every thread inherits the mask.
    if let Err(e) = profiler::os::signals::block_agent_signals() {
        eprintln!("profiler: cannot set up signal handling: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Attach(args) => app::AttachConfig::from_args(&args).and_then(|mut cfg| {
            cfg.open_outputs()?;
            drop_privileges(cfg.verbose);
            app::run_attach(&cfg, &mut |m| eprintln!("profiler: {m}"), &mut |s| {
                eprint!("{s}")
            })
        }),
        Command::Doctor(args) => profiler::doctor::run(args.pid, &args.debug_dir).map(|report| {
            print!("{report}");
            if !report.can_attach() {
                std::process::exit(1);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("profiler: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
