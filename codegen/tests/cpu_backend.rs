//! The CPU backend on small hand-built kernels: HIP's collective semantics,
//! MCUDA splitting at barriers, and checked mode catching planted bugs.
#![cfg(feature = "cpu")]

use attnforge_codegen::cpu::{compile, Arg, CpuKernel, CpuOptions, FindingKind, LaunchError};
use attnforge_codegen::ir::builder::KernelBuilder;
use attnforge_codegen::ir::verify::verify;
use attnforge_codegen::ir::{Access, Collective, Dim, Expr, Scalar, Special};
use attnforge_codegen::target::Arch;

fn tid() -> Expr {
    Expr::special(Special::ThreadIdx)
}

fn jit(b: KernelBuilder) -> CpuKernel {
    let k = b.finish();
    let a = verify(&k).unwrap_or_else(|e| panic!("{e}"));
    compile(&k, &a, CpuOptions { checked: true }).unwrap_or_else(|e| panic!("{e}"))
}

/// HIP's rules (amd_warp_functions.h), written independently of the lowering.
fn hip_shuffle(kind: &str, vals: &[i32], lane: i32, arg: i32, width: i32, ws: i32) -> i32 {
    let index = match kind {
        "xor" => {
            let i = lane ^ arg;
            if i >= ((lane + width) & !(width - 1)) {
                lane
            } else {
                i
            }
        }
        "down" => {
            if (lane & (width - 1)) + arg >= width {
                lane
            } else {
                lane + arg
            }
        }
        _ => arg + (lane & !(width - 1)),
    };
    vals[(index & (ws - 1)) as usize]
}

#[test]
fn shuffles_follow_hip_semantics_on_wave64_and_wave32() {
    for arch in [Arch::Gfx90a, Arch::Gfx1030] {
        let ws = arch.target().warp_size as i32;
        for (kind, arg, width) in [
            ("xor", 1, ws),
            ("xor", 5, 8),
            ("xor", 16, 8), // leaves the segment: own value
            ("down", 3, ws),
            ("down", 2, 4),
            ("idx", 7, ws),
            ("idx", 3, 4),
            ("idx", ws + 9, 16), // wraps like ds_bpermute
        ] {
            let mut b = KernelBuilder::new("shfl", arch.target(), 2 * ws as u32);
            let out = b.global("out", Scalar::I32, Access::ReadWrite);
            // Values differ per thread and per warp: 100·warp + 3·lane + 1.
            let lane = Expr::special(Special::LaneId);
            let v = b.let_(
                "v",
                Expr::special(Special::WarpId) * Expr::i32(100)
                    + lane * Expr::i32(3)
                    + Expr::i32(1),
            );
            let a = Expr::i32(arg);
            let op = match kind {
                "xor" => Collective::ShuffleXor {
                    mask: a,
                    width: width as u32,
                },
                "down" => Collective::ShuffleDown {
                    delta: a,
                    width: width as u32,
                },
                _ => Collective::ShuffleIdx {
                    lane: a,
                    width: width as u32,
                },
            };
            let r = b.collective("r", op, v);
            b.store(out, tid(), r);
            let k = jit(b);
            let mut got = vec![0i32; 2 * ws as usize];
            k.launch_checked([1, 1, 1], &mut [Arg::output(&mut got)])
                .unwrap();
            for w in 0..2 {
                let vals: Vec<i32> = (0..ws).map(|l| 100 * w + 3 * l + 1).collect();
                for l in 0..ws {
                    let want = hip_shuffle(kind, &vals, l, arg, width, ws);
                    assert_eq!(
                        got[(w * ws + l) as usize],
                        want,
                        "{arch} {kind}({arg}, width {width}) warp {w} lane {l}"
                    );
                }
            }
        }
    }
}

#[test]
fn warp_reductions_give_every_lane_the_warp_result() {
    for arch in [Arch::Gfx90a, Arch::Gfx1030] {
        let ws = arch.target().warp_size;
        let mut b = KernelBuilder::new("red", arch.target(), 4 * ws);
        let x = b.global("x", Scalar::F32, Access::Read);
        let sum = b.global("sum", Scalar::F32, Access::ReadWrite);
        let max = b.global("max", Scalar::F32, Access::ReadWrite);
        let v = b.let_("v", Expr::load(x, tid(), 1));
        let s = b.collective("s", Collective::WarpSum, v.clone());
        let m = b.collective("m", Collective::WarpMax, v);
        b.store(sum, tid(), s);
        b.store(max, tid(), m);
        let k = jit(b);
        let n = 4 * ws as usize;
        let xs: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let (mut sums, mut maxs) = (vec![0f32; n], vec![0f32; n]);
        k.launch_checked(
            [1, 1, 1],
            &mut [
                Arg::input(&xs),
                Arg::output(&mut sums),
                Arg::output(&mut maxs),
            ],
        )
        .unwrap();
        for (w, chunk) in xs.chunks(ws as usize).enumerate() {
            let want_sum: f32 = chunk.iter().sum();
            let want_max = chunk.iter().cloned().fold(f32::MIN, f32::max);
            for l in 0..ws as usize {
                assert_eq!(sums[w * ws as usize + l], want_sum, "{arch}");
                assert_eq!(maxs[w * ws as usize + l], want_max, "{arch}");
            }
        }
    }
}

/// A block-wide tree reduction in shared memory: barriers inside a
/// block-uniform while loop, a per-thread loop variable carried across them.
fn tree_sum(arch: Arch, with_barrier: bool) -> KernelBuilder {
    let bd = 2 * arch.target().warp_size;
    let mut b = KernelBuilder::new("tree", arch.target(), bd);
    let x = b.global("x", Scalar::F32, Access::Read);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let sm = b.shared("sm", Scalar::F32, bd);
    let blk = Expr::special(Special::BlockIdx(Dim::X));
    let g = b.let_("g", blk.clone() * Expr::i32(bd as i32) + tid());
    b.store(sm, tid(), Expr::load(x, g, 1));
    b.barrier();
    let s = b.var("s", Expr::i32(bd as i32 / 2));
    b.while_(Expr::Var(s).gt(Expr::i32(0)), |b| {
        b.if_(tid().lt(Expr::Var(s)), |b| {
            let mine = Expr::load(sm, tid(), 1);
            let other = Expr::load(sm, tid() + Expr::Var(s), 1);
            b.store(sm, tid(), mine + other);
        });
        if with_barrier {
            b.barrier();
        }
        b.set(s, Expr::Var(s) / Expr::i32(2));
    });
    b.if_(tid().eq_(Expr::i32(0)), |b| {
        b.store(out, blk, Expr::load(sm, Expr::i32(0), 1))
    });
    b
}

#[test]
fn barriers_inside_uniform_loops_split_correctly() {
    for arch in [Arch::Gfx90a, Arch::Gfx1030] {
        let bd = 2 * arch.target().warp_size as usize;
        let k = jit(tree_sum(arch, true));
        let blocks = 5;
        let xs: Vec<f32> = (0..bd * blocks).map(|i| (i % 7) as f32).collect();
        let mut out = vec![f32::NAN; blocks];
        k.launch_checked(
            [blocks as u32, 1, 1],
            &mut [Arg::input(&xs), Arg::output(&mut out)],
        )
        .unwrap();
        for (blk, chunk) in xs.chunks(bd).enumerate() {
            assert_eq!(out[blk], chunk.iter().sum::<f32>(), "{arch} block {blk}");
        }
    }
}

fn findings(r: Result<(), LaunchError>) -> Vec<FindingKind> {
    match r {
        Ok(()) => vec![],
        Err(LaunchError::Findings { findings, .. }) => {
            findings.into_iter().map(|f| f.kind).collect()
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn checked_mode_catches_a_missing_barrier_as_a_race() {
    let arch = Arch::Gfx1030;
    let bd = 64;
    let xs = vec![1f32; bd];
    let mut out = vec![0f32; 1];
    let k = jit(tree_sum(arch, false));
    let f = findings(k.launch_checked([1, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)]));
    assert!(
        f.iter()
            .any(|k| matches!(k, FindingKind::SharedRace { buffer, .. } if buffer == "sm")),
        "{f:?}"
    );
    let k = jit(tree_sum(arch, true));
    let f = findings(k.launch_checked([1, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)]));
    assert_eq!(f, vec![]);
}

#[test]
fn checked_mode_catches_out_of_bounds_loads_and_stores() {
    let arch = Arch::Gfx90a;
    let mk = |shift: i32| {
        let mut b = KernelBuilder::new("copy", arch.target(), 64);
        let x = b.global("x", Scalar::F32, Access::Read);
        let out = b.global("out", Scalar::F32, Access::ReadWrite);
        b.store(
            out,
            tid() - Expr::i32(shift),
            Expr::load(x, tid() + Expr::i32(shift), 1),
        );
        jit(b)
    };
    let xs = vec![1f32; 64];
    let mut out = vec![0f32; 64];
    let f =
        findings(mk(1).launch_checked([1, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)]));
    assert!(f.contains(&FindingKind::OutOfBounds {
        buffer: "x".into(),
        index: 64,
        lanes: 1,
        len: 64,
        write: false
    }));
    assert!(f.contains(&FindingKind::OutOfBounds {
        buffer: "out".into(),
        index: -1,
        lanes: 1,
        len: 64,
        write: true
    }));
    // The refused load yields zero and the refused store never happens.
    assert_eq!(out[62], 0.0);
    assert_eq!(out[0], 1.0);
    let f =
        findings(mk(0).launch_checked([1, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)]));
    assert_eq!(f, vec![]);
}

/// A global race makes a value the verifier took for block-uniform differ
/// between threads; checked mode notices when a barrier depends on it.
fn diverging(arch: Arch, race: bool, collective: bool) -> KernelBuilder {
    let mut b = KernelBuilder::new("diverge", arch.target(), 2 * arch.target().warp_size);
    let scratch = b.global("scratch", Scalar::I32, Access::ReadWrite);
    let value = if race { tid() } else { Expr::i32(7) };
    b.store(scratch, Expr::i32(0), value);
    let c = b.let_("c", Expr::load(scratch, Expr::i32(0), 1));
    b.if_(c.eq_(Expr::i32(0)), |b| {
        if collective {
            b.collective("s", Collective::WarpSum, Expr::i32(1));
        } else {
            b.barrier();
        }
    });
    b
}

#[test]
fn checked_mode_catches_barrier_and_warp_divergence() {
    for arch in [Arch::Gfx90a, Arch::Gfx1030] {
        for collective in [false, true] {
            let want = if collective {
                FindingKind::WarpDivergence
            } else {
                FindingKind::BarrierDivergence
            };
            let mut scratch = vec![0i32; 1];
            let f = findings(
                jit(diverging(arch, true, collective))
                    .launch_checked([1, 1, 1], &mut [Arg::output(&mut scratch)]),
            );
            assert!(f.contains(&want), "{arch}: {f:?}");
            let f = findings(
                jit(diverging(arch, false, collective))
                    .launch_checked([1, 1, 1], &mut [Arg::output(&mut scratch)]),
            );
            assert_eq!(f, vec![], "{arch}");
        }
    }
}

#[test]
fn findings_name_kernel_block_thread_and_address() {
    let mut b = KernelBuilder::new("oob", Arch::Gfx90a.target(), 64);
    let out = b.global("out", Scalar::I32, Access::ReadWrite);
    let blk = Expr::special(Special::BlockIdx(Dim::Y));
    b.if_(
        blk.eq_(Expr::i32(2)).and_then(tid().eq_(Expr::i32(17))),
        |b| b.store(out, Expr::i32(1000), Expr::i32(1)),
    );
    let mut buf = vec![0i32; 8];
    let err = jit(b)
        .launch_checked([1, 3, 1], &mut [Arg::output(&mut buf)])
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("kernel `oob`, block (0, 2, 0), thread 17: store of 1 element(s) at `out`[1000] is out of bounds (8 elements)"),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_typed_errors() {
    let mut b = KernelBuilder::new("args", Arch::Gfx90a.target(), 64);
    let x = b.global("x", Scalar::F32, Access::Read);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let n = b.scalar_param("n", Scalar::I32);
    b.if_(tid().lt(n), |b| {
        b.store(out, tid(), Expr::load(x, tid(), 1))
    });
    let k = jit(b);
    let xs = vec![1f32; 64];
    let out = vec![0f32; 64];
    let e = k.launch_checked(
        [1, 1, 1],
        &mut [Arg::input(&xs), Arg::input(&out), Arg::I32(3)],
    );
    assert!(e.unwrap_err().to_string().contains("pass it as Arg::Out"));
    let mut out = vec![0f32; 64];
    let e = k.launch_checked([1, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("2 arguments for 3 parameters"));
    let e = k.launch_checked(
        [1, 1, 1],
        &mut [Arg::input(&xs), Arg::output(&mut out), Arg::F32(3.0)],
    );
    assert!(e.unwrap_err().to_string().contains("scalar i32"));
    k.launch_checked(
        [1, 1, 1],
        &mut [Arg::input(&xs), Arg::output(&mut out), Arg::I32(3)],
    )
    .unwrap();
    assert_eq!(&out[..4], &[1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn exp2_is_accurate_and_handles_infinities_and_nan() {
    let mut b = KernelBuilder::new("exp2", Arch::Host.target(), 1);
    let x = b.global("x", Scalar::F32, Access::Read);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let i = Expr::special(Special::BlockIdx(Dim::X));
    b.store(out, i.clone(), Expr::load(x, i, 1).exp2());
    let k = jit(b);
    let mut xs: Vec<f32> = (0..20000).map(|i| -140.0 + i as f32 * 0.0134).collect();
    xs.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        127.99,
        128.0,
        128.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let mut got = vec![0f32; xs.len()];
    k.launch_checked(
        [xs.len() as u32, 1, 1],
        &mut [Arg::input(&xs), Arg::output(&mut got)],
    )
    .unwrap();
    for (&x, &y) in xs.iter().zip(&got) {
        let want = x.exp2();
        if x.is_nan() {
            assert!(y.is_nan());
        } else if x < -126.0 {
            assert_eq!(y, 0.0, "exp2({x}) flushes below 2^-126");
        } else if want.is_infinite() {
            assert_eq!(y, want, "exp2({x})");
        } else {
            let rel = ((y - want) / want).abs();
            assert!(
                rel <= 3e-7,
                "exp2({x}) = {y}, want {want} (relative error {rel:e})"
            );
        }
    }
}

#[test]
fn fp8_casts_match_the_host_conversion_on_every_code_and_a_sweep() {
    use attnforge_codegen::F8E4M3;
    // Decode: every one of the 256 codes to f32 (in 16-lane vector loads,
    // as the kernels read them). Encode: f32 values over the whole range.
    let mut b = KernelBuilder::new("fp8", Arch::Host.target(), 1);
    let codes = b.global("codes", Scalar::F8E4M3, Access::Read);
    let decoded = b.global("decoded", Scalar::F32, Access::ReadWrite);
    let xs = b.global("xs", Scalar::F32, Access::Read);
    let encoded = b.global("encoded", Scalar::F8E4M3, Access::ReadWrite);
    let i = Expr::special(Special::BlockIdx(Dim::X));
    b.if_(i.clone().lt(Expr::i32(16)), |b| {
        let v = b.let_("v", Expr::load(codes, i.clone() * Expr::i32(16), 16));
        for l in 0..16u8 {
            let at = i.clone() * Expr::i32(16) + Expr::i32(l as i32);
            b.store(decoded, at, v.clone().lane(l).cast(Scalar::F32));
        }
    });
    b.store(
        encoded,
        i.clone(),
        Expr::load(xs, i, 1).cast(Scalar::F8E4M3),
    );
    let k = jit(b);
    let all: Vec<F8E4M3> = (0..=255u8).map(F8E4M3).collect();
    let mut xs: Vec<f32> = (0..40_000)
        .map(|j| {
            let e = j % 26 - 15;
            (j as f32 * 0.618_034).sin() * 2f32.powi(e)
        })
        .collect();
    xs.extend(all.iter().filter(|c| !c.is_nan()).map(|c| c.to_f32()));
    xs.extend([
        448.0,
        464.0,
        463.99,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let mut dec = vec![0f32; 256];
    let mut enc = vec![F8E4M3(0); xs.len()];
    k.launch_checked(
        [xs.len() as u32, 1, 1],
        &mut [
            Arg::input(&all),
            Arg::output(&mut dec),
            Arg::input(&xs),
            Arg::output(&mut enc),
        ],
    )
    .unwrap();
    for (c, &y) in all.iter().zip(&dec) {
        let want = c.to_f32();
        assert!(
            y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
            "{:#04x}: {y}, want {want}",
            c.0
        );
    }
    for (&x, &y) in xs.iter().zip(&enc) {
        let want = F8E4M3::from_f32(x);
        assert!(
            y == want || (y.is_nan() && want.is_nan()),
            "{x}: {:#04x}, want {:#04x}",
            y.0,
            want.0
        );
    }
}

/// An fp8 cast times a power of two (what the host schedules read fp8 K/V
/// as: the value times 2^-8) equals the value times it, in vectors and in
/// scalars, for every code: where the lowering folds the factor into the
/// conversion (2^-117 ..= 2^118) and where it multiplies (the others).
#[test]
fn fp8_casts_times_a_power_of_two_equal_the_value_times_it() {
    use attnforge_codegen::F8E4M3;
    let factors = [
        2f32.powi(-8),
        1.0,
        2f32.powi(-117),
        2f32.powi(118),
        2f32.powi(-118),
        2f32.powi(119),
        -2f32.powi(-8),
        3.0,
    ];
    let mut b = KernelBuilder::new("fp8_times", Arch::Host.target(), 1);
    let codes = b.global("codes", Scalar::F8E4M3, Access::Read);
    let vec_out = b.global("vec_out", Scalar::F32, Access::ReadWrite);
    let one_out = b.global("one_out", Scalar::F32, Access::ReadWrite);
    let i = Expr::special(Special::BlockIdx(Dim::X));
    for (f, &c) in factors.iter().enumerate() {
        let at = i.clone() * Expr::i32(16) + Expr::i32(256 * f as i32);
        let v = Expr::load(codes, i.clone() * Expr::i32(16), 16).cast(Scalar::F32);
        b.store(vec_out, at, v * Expr::Vector(vec![Expr::f32(c); 16]));
        for l in 0..16 {
            let at = i.clone() * Expr::i32(16) + Expr::i32(256 * f as i32 + l);
            let x = Expr::load(codes, i.clone() * Expr::i32(16) + Expr::i32(l), 1);
            b.store(one_out, at, x.cast(Scalar::F32) * Expr::f32(c));
        }
    }
    let k = jit(b);
    let all: Vec<F8E4M3> = (0..=255u8).map(F8E4M3).collect();
    let n = 256 * factors.len();
    let (mut vec_out, mut one_out) = (vec![0f32; n], vec![0f32; n]);
    k.launch_checked(
        [16, 1, 1],
        &mut [
            Arg::input(&all),
            Arg::output(&mut vec_out),
            Arg::output(&mut one_out),
        ],
    )
    .unwrap();
    for (f, &c) in factors.iter().enumerate() {
        for (code, got) in all.iter().zip(0..) {
            let want = code.to_f32() * c;
            for (how, out) in [("vector", &vec_out), ("scalar", &one_out)] {
                let y = out[256 * f + got];
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "{how} {:#04x} × {c:e}: {y:e}, want {want:e}",
                    code.0
                );
            }
        }
    }
}

/// Elementwise vector arithmetic and conversions equal the same operations
/// done lane by lane on the host (fma, min/max, exp2, + − × ÷, selects,
/// f16/bf16/fp8 to f32 and f32 to f16/bf16), at the host and a GPU target.
#[test]
fn vector_arithmetic_and_conversions_equal_the_scalar_operations() {
    use half::{bf16, f16};
    const N: usize = 8;
    for arch in [Arch::Host, Arch::Gfx1030] {
        let t = arch.target();
        let mut b = KernelBuilder::new("vec", t, t.warp_size);
        let x = b.global("x", Scalar::F32, Access::Read);
        let h = b.global("h", Scalar::F16, Access::Read);
        let bh = b.global("bh", Scalar::BF16, Access::Read);
        let f8 = b.global("f8", Scalar::F8E4M3, Access::Read);
        let out = b.global("out", Scalar::F32, Access::ReadWrite);
        let oh = b.global("oh", Scalar::F16, Access::ReadWrite);
        let ob = b.global("ob", Scalar::BF16, Access::ReadWrite);
        let row = b.let_("row", tid() * Expr::i32(N as i32));
        let ld = |at: Expr| {
            let lo = Expr::load(x, at.clone(), 4);
            let hi = Expr::load(x, at + Expr::i32(4), 4);
            Expr::Vector(
                (0..N as u8)
                    .map(|e| {
                        if e < 4 {
                            lo.clone().lane(e)
                        } else {
                            hi.clone().lane(e - 4)
                        }
                    })
                    .collect(),
            )
        };
        let a = b.let_("a", ld(row.clone()));
        let c = b.let_("c", ld(row.clone() + Expr::i32(4096)));
        let results = [
            a.clone().fma(c.clone(), a.clone()),
            a.clone().max(c.clone()) - a.clone().min(c.clone()),
            (a.clone() * Expr::Vector(vec![Expr::f32(0.125); N])).exp2(),
            (a.clone() + c.clone()) / c.clone(),
            tid().lt(Expr::i32(7)).select(a.clone(), c.clone()),
            Expr::load(h, row.clone(), 8).cast(Scalar::F32),
            Expr::load(bh, row.clone(), 8).cast(Scalar::F32),
            Expr::load(f8, row.clone(), 8).cast(Scalar::F32),
        ];
        // A local array of vectors, read back through another region
        // (a shuffle between them) at the GPU target.
        let keep = b.local("keep", Scalar::F32, N as u32 * results.len() as u32);
        for (k, r) in results.iter().enumerate() {
            b.store(keep, Expr::i32((k * N) as i32), r.clone());
        }
        b.shfl_xor("sync", Expr::f32(0.0), 0, 1);
        b.unroll("k", results.len() as u32, |b, k| {
            b.unroll("e", N as u32, |b, e| {
                let at = k.clone() * Expr::i32(N as i32) + e.clone();
                let dst =
                    (tid() * Expr::i32(results.len() as i32) + k.clone()) * Expr::i32(N as i32) + e;
                b.store(out, dst, Expr::load(keep, at, 1));
            });
        });
        b.store(oh, row.clone(), a.clone().cast(Scalar::F16));
        b.store(ob, row, a.cast(Scalar::BF16));
        let kernel = jit(b);

        let threads = t.warp_size as usize;
        let mut xs: Vec<f32> = (0..8192)
            .map(|i| ((i * 7919) % 2001) as f32 / 250.0 - 4.0)
            .collect();
        xs[3] = f32::NAN;
        xs[4100] = -0.0;
        let hs: Vec<f16> = (0..threads * N)
            .map(|i| f16::from_bits((i as u16).wrapping_mul(40503)))
            .collect();
        let bs: Vec<bf16> = (0..threads * N)
            .map(|i| bf16::from_bits((i as u16).wrapping_mul(40503)))
            .collect();
        let f8s: Vec<u8> = (0..threads * N).map(|i| (i * 37) as u8).collect();
        let mut got = vec![0f32; threads * results.len() * N];
        let (mut gh, mut gb) = (vec![f16::ZERO; threads * N], vec![bf16::ZERO; threads * N]);
        kernel
            .launch_checked(
                [1, 1, 1],
                &mut [
                    Arg::input(&xs),
                    Arg::input(&hs),
                    Arg::input(&bs),
                    Arg::input(&f8s),
                    Arg::output(&mut got),
                    Arg::output(&mut gh),
                    Arg::output(&mut gb),
                ],
            )
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
        for tdx in 0..threads {
            for e in 0..N {
                let i = tdx * N + e;
                let (a, c) = (xs[i], xs[i + 4096]);
                let want = [
                    a.mul_add(c, a),
                    a.max(c) - a.min(c),
                    (a * 0.125).exp2(),
                    (a + c) / c,
                    if tdx < 7 { a } else { c },
                    hs[i].to_f32(),
                    bs[i].to_f32(),
                    attnforge_codegen::F8E4M3(f8s[i]).to_f32(),
                ];
                for (k, w) in want.iter().enumerate() {
                    let g = got[(tdx * want.len() + k) * N + e];
                    let ok = if k == 2 {
                        same(g, *w) || ((g - w) / w).abs() <= 3e-7
                    } else {
                        same(g, *w)
                    };
                    assert!(
                        ok,
                        "{arch} op {k} lane {e} thread {tdx}: {g} != {w} (a {a}, c {c})"
                    );
                }
                assert_eq!(
                    gh[i].to_bits(),
                    f16::from_f32(a).to_bits(),
                    "{arch} f16 of {a}"
                );
                let want_b = bf16::from_f32(a);
                assert!(
                    gb[i] == want_b || (a.is_nan() && gb[i].is_nan()),
                    "{arch} bf16 of {a}"
                );
            }
        }
    }
}

/// The kernel the on-disk cache test compiles: `out[i] = x[i] * c`, with a
/// constant unique to the test run so that no earlier run cached it.
fn cache_probe(c: f32) -> KernelBuilder {
    let mut b = KernelBuilder::new("cache_probe", Arch::Host.target(), 1);
    let x = b.global("x", Scalar::F32, Access::Read);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let i = Expr::special(Special::BlockIdx(Dim::X));
    b.store(out, i.clone(), Expr::load(x, i, 1) * Expr::f32(c));
    b
}

/// Run by `machine_code_is_cached_on_disk_and_damaged_entries_are_rebuilt`
/// in a child process (a fresh JIT): compiles the probe, checks it
/// computes, and prints where its code came from.
#[test]
fn cache_probe_child() {
    let Ok(c) = std::env::var("AF_CACHE_PROBE") else {
        return;
    };
    let c: f32 = c.parse().unwrap();
    let k = jit(cache_probe(c));
    let xs = [1.0f32, 2.0, -3.0];
    let mut out = [0f32; 3];
    k.launch_checked([3, 1, 1], &mut [Arg::input(&xs), Arg::output(&mut out)])
        .unwrap();
    assert_eq!(out, [c, 2.0 * c, -3.0 * c]);
    println!("source: {:?}", k.code_source());
}

#[test]
fn machine_code_is_cached_on_disk_and_damaged_entries_are_rebuilt() {
    if std::env::var_os("AF_CACHE_PROBE").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = 1.0 + (std::process::id() % 1000) as f32 / 1024.0;
    let run = || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cache_probe_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AF_CACHE_PROBE", c.to_string())
            .env("ATTNFORGE_JIT_CACHE", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split("source: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no source line in:\n{text}"))
    };
    let entries = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "o"))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), "Compiled");
    assert_eq!(entries().len(), 1, "one entry, no temporary file left");
    assert_eq!(run(), "DiskCache");
    // A damaged object that still links, but with the constant changed
    // (it would compute 2·c), is refused by its checksum.
    let entry = entries().pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes
        .windows(4)
        .rposition(|w| w == c.to_le_bytes())
        .expect("the constant in the object");
    bytes[at..at + 4].copy_from_slice(&(2.0 * c).to_le_bytes());
    std::fs::write(&entry, &bytes).unwrap();
    assert_eq!(run(), "Compiled");
    assert_eq!(run(), "DiskCache", "the rebuild replaced the damaged entry");
    // A foreign entry (whole, but another key's) is refused by its key.
    let mut bytes = std::fs::read(&entry).unwrap();
    bytes[8] ^= 1;
    std::fs::write(&entry, &bytes).unwrap();
    assert_eq!(run(), "Compiled");
    // A truncated one too.
    std::fs::write(&entry, &std::fs::read(&entry).unwrap()[..40]).unwrap();
    assert_eq!(run(), "Compiled");
    assert_eq!(entries().len(), 1);
}
