//! Cross-node lock hand-off latency: node B unlocks, node A's waiting lock is granted. Two
//! lockmgr sessions (as two smbd nodes hold) against an in-process lockmgrd over shared memory;
//! prints HDR percentiles of the hand-off.
//!
//! `handoff [--iterations N] [--server-spin-us US] [--waiter-spin]`
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lockbench::smb::handoff::{run, HandoffOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about = "Cross-node lock hand-off latency through lockmgrd")]
struct Cli {
    #[arg(long, default_value_t = 20_000)]
    iterations: u64,
    /// Busy-poll budget of lockmgrd's loop in microseconds (0 = sleep at once).
    #[arg(long, default_value_t = 0)]
    server_spin_us: u64,
    /// The waiting node busy-polls instead of sleeping on its session's fd.
    #[arg(long)]
    waiter_spin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.iterations == 0 {
        eprintln!("handoff: --iterations must be positive");
        return ExitCode::from(2);
    }
    let opts = HandoffOptions {
        iterations: cli.iterations,
        server_spin: Duration::from_micros(cli.server_spin_us),
        waiter_spin: cli.waiter_spin,
    };
    match run(&opts) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("handoff: {e}");
            ExitCode::from(2)
        }
    }
}
