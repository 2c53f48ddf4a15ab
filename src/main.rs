//! The `nof1d` binary: the allocator, then the command table
//! ([`nof1d::cli::commands`]).

use std::process::ExitCode;

/// mimalloc: the engine allocates many small matrices per fit on every
/// thread; glibc malloc spent ~15% of a simulation in the kernel.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    nof1d::cli::commands::main()
}
