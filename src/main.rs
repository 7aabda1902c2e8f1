//! The `ghostwire-backup` binary: parses flags, sets up logging, and runs the command on a
//! tokio runtime; an error ends the process with its exit code (README's table). The
//! command line itself is in `cli/`.

use std::process::ExitCode;

use clap::Parser;

use ghostwire_backup::exit::Exit;
use ghostwire_backup::priority;

use cli::flags::{Cli, Command};

mod cli;

fn main() -> ExitCode {
    return_large_buffers_to_the_kernel();
    ghostwire_backup::fsutil::never_create_writable_by_others();
    let cli = Cli::parse();
    let json_logs = cli::logging::init_logging(&cli.global);
    // Before the runtime: its threads, and the ones backups start, inherit the priority.
    let low_priority = match &cli.command {
        Command::Backup(args) => args.low_priority,
        Command::Run(args) => args.backup.low_priority,
        _ => false,
    };
    if low_priority {
        priority::yield_to_the_desktop();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(cli::dispatch::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line a person can act on; in JSON mode, one event a log pipeline can too.
            if json_logs {
                tracing::error!(error = format!("{err:#}"), "failed");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(Exit::of(&err).code())
        }
    }
}

/// Allocations of 1 MiB and more (upload parts, zstd jobs) are mapped on their own and
/// unmapped when freed. glibc's adaptive threshold would otherwise move them into its
/// per-thread heaps after the first free, where freed parts stay resident: a 2 GiB backup's
/// peak RSS crept from 58 to 74 MiB that way (measured with `bench/run.sh`).
fn return_large_buffers_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
