//! The `sluicectl` binary: parse the command line, run it, turn the outcome into an exit code.
//! See the library's crate docs for where things live.

use std::process::ExitCode;

use clap::Parser;
use sluice_cli::args::Cli;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = Cli::parse();
    match sluice_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `sluicectl consume | head`: the reader had enough, which is not a failure.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
