//! Command-line definitions. Each subcommand is one thing a technician or coordinator does.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A filtering DNS resolver for schools.
#[derive(Parser)]
#[command(name = "schoolgate", version, about)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "SCHOOLGATE_CONFIG",
        default_value = "config/schoolgate.toml"
    )]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Answer DNS queries, filtering by the configured lists.
    Serve(ServeArgs),
    /// Explain what would happen to a name, without a server.
    Check(CheckArgs),
    /// Compile the lists ahead of time (serve does this itself when they change).
    Compile,
}

/// Options for `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Listen address (UDP and TCP); repeat for several. Overrides server.listen.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Upstream resolver; repeat for several. Overrides server.upstreams.
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstream: Vec<SocketAddr>,
    /// Metrics and health endpoint address. Overrides admin.listen.
    #[arg(long = "admin", value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// Format of the server's own log.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output styles.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options for `check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The name to check.
    pub domain: String,
    /// The client asking: an address or a configured client name.
    #[arg(long)]
    pub client: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
