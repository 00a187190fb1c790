//! `attnforge`: what a spec generates, how big it is on each GPU, whether
//! it is right, and how fast it runs on the CPU backend, from a shell.
//!
//! ```text
//! attnforge emit   --layout "page_size=16, kv_heads=8, head_dim=128, dtype=f16" \
//!                  --attention "q_heads=32, causal" --arch gfx90a --kernel decode
//! attnforge build  --layout ... --attention ... --arch all
//! attnforge resources
//! attnforge check  --layout ... --attention ...
//! attnforge bench  --layout ... --attention ...
//! attnforge kernels
//! ```
//!
//! The spec arguments take the attributes' keys and go through the same
//! front-end (`attnforge_codegen::frontend::text`). Output is a table, or
//! JSON with `--json`; an error is one line per problem on stderr and a
//! non-zero exit status (2 for bad arguments, 1 for a failed step).

mod bench;
mod build;
mod check;
mod emit;
mod kernels;
mod resources;
mod spec;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Paged-attention kernels for your model's exact shape: print, build,
/// check and bench them.
#[derive(Parser)]
#[command(name = "attnforge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a kernel of the spec as HIP C++ (CUDA C++ for sm_80, sm_90).
    Emit(emit::Args),
    /// Compile the spec's kernels with hipcc and nvcc and print each code
    /// object's registers, spills, shared memory and occupancy.
    Build(build::Args),
    /// Every bundled kernel's registers, spills, shared memory and
    /// occupancy at every arch; exits 1 if any spills.
    Resources(resources::Args),
    /// Run every kernel of the spec on the CPU backend, fast and checked,
    /// on random paged inputs against the f64 reference.
    Check(check::Args),
    /// The spec's CPU figures: decode GB/s beside memcpy, prefill TFLOP/s,
    /// JIT compile time.
    Bench(bench::Args),
    /// The bundled model specs and their kernels.
    Kernels(kernels::Args),
}

/// Why a command failed: bad arguments (exit 2) or a failed step (exit 1).
pub enum Failure {
    /// The arguments are wrong; each line names what to fix.
    Usage(String),
    /// A step failed (a compile, a launch, a check beyond its tolerance).
    Step(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Step(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Emit(a) => emit::run(a),
        Command::Build(a) => build::run(a),
        Command::Resources(a) => resources::run(a),
        Command::Check(a) => check::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Kernels(a) => kernels::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            for line in msg.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(2)
        }
        Err(Failure::Step(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
