//! The command line, as clap parses it.

use clap::{Parser, Subcommand};

/// hivetrack: who holds this registry hive open, which keys, since when, and from where.
#[derive(Debug, Parser)]
#[command(name = "hivetrack", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the client's version and the driver's version and build.
    Version,
}
