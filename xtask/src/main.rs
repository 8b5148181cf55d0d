//! `cargo xtask`: Warden's development tasks.
//!
//! - `cargo xtask dev`: run every service built so far, in-process, on an
//!   SQLite database in `./warden-data`, with the example policies.
//! - `cargo xtask bench policy`: drive `Evaluate` and `grpc.health.v1.Health/Check`
//!   on one server and print both rates, latencies and their ratio.
//! - `cargo xtask bench policy --decision-log sync|async`: an engine that
//!   records every decision vs one that does not, audit in its own process.
//! - `cargo xtask bench h2load`: `Evaluate` vs `Health/Check` under h2load
//!   (`--callgrind`: instructions per request instead of time).
//! - `cargo xtask bench audit`: appends from 16 producers vs the database's
//!   own multi-row INSERT, and `Verify` throughput.
//! - `cargo xtask bench approval`: approvals created, reviewed and redeemed
//!   per second, and the latency redeeming adds to `Evaluate`.
//! - `cargo xtask book`: builds the documentation book into `target/book`
//!   and checks its links and the README's.
//! - `cargo xtask tidy`: checks the compiler does not make (crate docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_alerting;
mod bench_approval;
mod bench_audit;
mod bench_h2load;
mod bench_log;
mod bench_mcp;
mod dev;
mod tidy;

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Warden locally: all services, SQLite, example policies.
    Dev(dev::DevArgs),
    /// Benchmarks over gRPC.
    Bench {
        #[command(subcommand)]
        target: bench::Target,
    },
    /// Repository checks: crate roots carry a `//!` doc.
    Tidy,
    /// Build the documentation book (docs/) into target/book and check
    /// every link in it and in the README.
    Book,
}

pub use xtask::workspace_root;

/// mimalloc rather than the system allocator: request handling allocates
/// many small, short-lived objects across threads, where glibc's malloc
/// spent about a tenth of the audit service's CPU (see `docs/src/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => runtime().block_on(dev::run(args)),
        Command::Bench { target } => runtime().block_on(bench::run(target)),
        Command::Tidy => tidy::run(),
        Command::Book => match xtask::book::build_and_check(&workspace_root()) {
            Ok(out) => {
                println!("book: {} (links checked)", out.join("index.html").display());
                Ok(())
            }
            Err(errors) => Err(format!("{} broken link(s):\n  {}", errors.len(), errors.join("\n  "))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}
