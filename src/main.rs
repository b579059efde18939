//! The `schoolgate` command: parse the command line, run the subcommand, map errors to exit codes.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Serve(_)) {
        // Reports piped into `head` or `less` should end quietly when the reader goes away, as
        // other Unix tools do, rather than panic on a broken pipe.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match commands::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("schoolgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
