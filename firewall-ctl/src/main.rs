//! `firewall-ctl`: parses the command line and runs it (see the library's
//! [`firewall_ctl::cli`]).

use std::process::ExitCode;

use clap::Parser as _;
use firewall_ctl::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    cli::exit(cli::run(cli), json)
}
