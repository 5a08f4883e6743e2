//! `hivetrack`: the command-line client of the hivetrack registry filter driver.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use hivetrack_cli::{
    accounts,
    app::{self, Env},
    cli::Cli,
    commands, exit, transport,
    wait::SystemClock,
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
    let mut stderr = std::io::stderr();
    let accounts = accounts::system();
    let (backend, emulator) = (cli.global.backend, cli.global.emulator.clone());
    let mut connect = move |need| transport::open(backend, need, emulator.as_deref());
    let mut clock = SystemClock::start();
    let mut env = Env {
        out: &mut stdout,
        err: &mut stderr,
        connect: &mut connect,
        accounts: accounts.as_ref(),
        now: app::filetime_now(),
        clock: &mut clock,
    };
    let result = app::run(&cli, &mut env);
    let _ = stdout.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("hivetrack: {err:#}");
            ExitCode::from(commands::exit_code_for(&err))
        }
    }
}
