//! One function per subcommand. This is the binary's edge: errors become `anyhow` here.

mod changes;
mod check;
mod compile;
mod exempt;
mod list;
mod logs;
mod report;
mod serve;
mod time_arg;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(&cli.config, args),
        Command::Check(args) => check::run(&cli.config, args),
        Command::Compile(args) => compile::run(&cli.config, args),
        Command::Exempt(cmd) => exempt::run(&cli.config, cmd),
        Command::List(cmd) => list::run(&cli.config, cmd),
        Command::Allow(args) => list::allow(&cli.config, args),
        Command::Changes(args) => changes::run(&cli.config, args),
        Command::Report(cmd) => report::run(&cli.config, cmd),
        Command::Logs(args) => logs::run(&cli.config, args),
    }
}
