//! `cargo xtask <task>`: everything a developer or CI runs, each task doing
//! its own set-up so it works on a fresh machine.

mod bench;
mod booted;
mod cargo;
mod demo;
mod guest;
mod package;
mod pressure;
mod rates;
mod reference;
mod setup;
mod test;
mod vm_test;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the XDP program needs (idempotent).
    Setup,
    /// Run every test: unit tests, then end-to-end tests in network namespaces (root).
    Test {
        /// Run the end-to-end tests against this firewall-ctl (for example
        /// the static build) instead of a fresh debug build.
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the firewall in a throwaway lab of network namespaces and show what it does (root).
    Demo,
    /// Measure the data plane per packet against a minimal XDP LPM allowlist, the control plane (start, reloads, allow, memory) at 10 to 250k prefixes per family, and what local users can do to the daemon (root).
    Bench(bench::BenchArgs),
    /// Build the Debian package and the static (musl) tarball into target/package/, and check the package with lintian.
    Package(package::PackageArgs),
    /// Run the end-to-end suite on another kernel (Debian 12's 6.1 by default) in a VM over this machine's root file system (root).
    VmTest(vm_test::VmTestArgs),
    /// Holds COUNT idle metrics clients to ADDRESS until stdin closes (`bench` runs it).
    #[command(hide = true)]
    HoldConnections {
        address: std::net::SocketAddr,
        count: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Test { binary, args } => test::run(binary.as_deref(), &args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Package(args) => package::run_cli(&args),
        Task::VmTest(args) => vm_test::run(&args),
        Task::HoldConnections { address, count } => pressure::hold_connections(address, count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
