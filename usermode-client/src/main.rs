//! `hivetrack`: the command-line client of the hivetrack registry filter driver.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use hivetrack_cli::{
    accounts,
    app::{self, Env},
    backend,
    cli::Cli,
    commands, exit, holder_identity, symbols,
    wait::SystemClock,
};

fn main() -> ExitCode {
    // Before anything can load a DLL: System32 only (review 21b, L8).
    hivetrack_cli::dll_search::harden();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print(); // --help, --version
                return ExitCode::from(exit::OK);
            }
            // A command line that does not parse still answers in JSON when --json is on it.
            if std::env::args_os().any(|a| a == "--json") {
                let message = e.render().to_string();
                let doc = commands::error_json("usage", message.trim(), exit::BAD_ARGUMENTS);
                let _ = std::io::stdout().write_all(doc.as_bytes());
            } else {
                let _ = e.print();
            }
            return ExitCode::from(exit::BAD_ARGUMENTS);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let accounts = accounts::system();
    let identities = holder_identity::system();
    let (choice, emulator) = (cli.global.backend, cli.global.emulator().map(str::to_owned));
    let mut connect = move |need| backend::open(choice, need, emulator.as_deref());
    let mut clock = SystemClock::start();
    let mut symbols = symbols::system();
    let mut env = Env {
        out: &mut stdout,
        err: &mut stderr,
        connect: &mut connect,
        accounts: accounts.as_ref(),
        identities: identities.as_ref(),
        now: app::filetime_now(),
        clock: &mut clock,
        symbols: symbols.as_mut(),
    };
    let code = match app::run(&cli, &mut env) {
        Ok(code) => code,
        Err(err) => commands::report_error(&err, cli.global.json, env.out, env.err),
    };
    let _ = stdout.flush();
    ExitCode::from(code)
}
