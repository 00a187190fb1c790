//! Bench script: JIT compile time of every bundled kernel on the CPU
//! backend, per kernel kind, target and mode: min / median / max, and the
//! whole list with `--all`.
//!
//! Run: `cargo run --release --example bench_jit` (BENCHMARKS.md). Each
//! kernel is generated, verified, lowered to LLVM, optimised and compiled to
//! machine code once per (target, mode), one at a time, so the figures are
//! single-thread compile times; nothing is cached between compilations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use attnforge::codegen::cpu::{compile, CodeSource, CpuOptions};
use attnforge::codegen::kernels::{generate, symbol};
use attnforge::Arch;

fn main() {
    // Compile times, not cache reads: the on-disk cache stays out of it
    // (set before any thread starts), and each (kernel, target, mode) is
    // compiled once, so the process's own JIT never serves a repeat.
    std::env::set_var("ATTNFORGE_JIT_CACHE", "off");
    let all = std::env::args().any(|a| a == "--all");
    let archs = [Arch::Gfx90a, Arch::Gfx1030, Arch::Sm90, Arch::Host];
    // (kind, arch, checked) -> compile times
    let mut times: BTreeMap<(String, String, bool), Vec<Duration>> = BTreeMap::new();
    // Items share some kernels (Gemma-2's two attentions share a merge).
    let mut seen = std::collections::HashSet::new();
    for b in attnforge::kernels::ALL {
        for spec in b.kernels() {
            if !seen.insert(symbol(&spec)) {
                continue;
            }
            for arch in archs {
                // sm_90's SIMT kernels are gfx1030's machine code (the JIT's
                // key ignores the arch's name): only its matrix-core ones.
                if arch == Arch::Sm90
                    && !generate(&spec, arch.target())
                        .expect("generate")
                        .uses_matrix_unit()
                {
                    continue;
                }
                for checked in [false, true] {
                    let start = Instant::now();
                    let g = generate(&spec, arch.target()).expect("generate");
                    let c =
                        compile(&g.kernel, &g.analysis, CpuOptions { checked }).expect("compile");
                    let total = start.elapsed();
                    assert_eq!(c.code_source(), CodeSource::Compiled);
                    if all {
                        println!(
                            "{:<48} {:<8} {:<7} {:>8.1} ms (LLVM {:.1} ms)",
                            symbol(&spec),
                            arch.name(),
                            if checked { "checked" } else { "fast" },
                            total.as_secs_f64() * 1e3,
                            c.compile_time().as_secs_f64() * 1e3
                        );
                    }
                    times
                        .entry((spec.kind().name().to_string(), arch.name().into(), checked))
                        .or_default()
                        .push(total);
                }
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\n| kernel | target | mode | kernels | min | median | max |");
    println!("|---|---|---|---|---|---|---|");
    let mut per_target: BTreeMap<(String, bool), Vec<Duration>> = BTreeMap::new();
    for ((kind, arch, checked), mut v) in times {
        v.sort();
        println!(
            "| {kind} | {arch} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            if checked { "checked" } else { "fast" },
            v.len(),
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
        per_target.entry((arch, checked)).or_default().extend(v);
    }
    println!("\n| target | mode | kernels | min | median | max |");
    println!("|---|---|---|---|---|---|");
    for ((arch, checked), mut v) in per_target {
        v.sort();
        println!(
            "| {arch} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            if checked { "checked" } else { "fast" },
            v.len(),
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
}
