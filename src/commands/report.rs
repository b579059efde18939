//! `schoolgate report daily`: build the day's summary, print or save it, or email it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use schoolgate::config::Config;
use schoolgate::mail::Mailer;
use schoolgate::report::render::{self, Format};

use crate::cli::{DailyArgs, ReportCommand, ReportFormat};

pub fn run(config_path: &Path, cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::Daily(args) => daily(config_path, args),
    }
}

fn daily(config_path: &Path, args: DailyArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let date = args.date.resolve(&config.time_zone);
    let report = schoolgate::report::build(&config, date, args.anonymise)?;
    if args.email {
        let smtp = config.smtp.as_ref().context(
            "--email needs an [smtp] section in the config (host, from; see config/schoolgate.toml)",
        )?;
        let mailer = Mailer::new(smtp)?;
        mailer.send(
            &config.report.recipients,
            &render::headline(&report),
            render::render(&report, Format::Text),
            Some(render::render(&report, Format::Html)),
        )?;
        eprintln!(
            "sent the {} report to {}",
            report.date,
            config.report.recipients.join(", ")
        );
        if args.out.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let format = match args.format {
        ReportFormat::Text => Format::Text,
        ReportFormat::Html => Format::Html,
        ReportFormat::Csv => Format::Csv,
        ReportFormat::Json => Format::Json,
    };
    let out = render::render(&report, format);
    match &args.out {
        Some(path) => {
            // Reports name devices: keep them as private as the logs.
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o640)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            f.write_all(out.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(out.as_bytes());
        }
    }
    Ok(ExitCode::SUCCESS)
}
