//! The `schoolgate` command: parse the command line, run the subcommand, map errors to exit codes.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match commands::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("schoolgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
