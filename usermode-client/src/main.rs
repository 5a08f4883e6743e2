//! `hivetrack`: the command-line client of the hivetrack registry filter driver.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use hivetrack_cli::{
    cli::{Cli, Command},
    commands, exit, transport,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::BAD_ARGUMENTS
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = match cli.command {
        Command::Version => commands::version(&mut stdout, transport::open_default),
        Command::RawIoctl {
            code,
            input,
            output_len,
        } => commands::raw_ioctl(
            &mut stdout,
            transport::open_default,
            code,
            &input.0,
            output_len,
        ),
    };
    let _ = stdout.flush();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            eprintln!("hivetrack: {err:#}");
            ExitCode::from(commands::exit_code_for(&err))
        }
    }
}
