//! The warp-level matrix instructions (`Collective::Mma`) on the CPU
//! backend, against the vendors' documentation restated here.
//!
//! Each test distributes random A, B and C over the lanes by a
//! lane-ownership table written out below from the documents (AMD's
//! matrix instruction calculator for the MFMAs, the PTX ISA's "Matrix
//! Fragments for mma.m16n8k16 with floating point type"), not from
//! `ir::mma`; runs the instruction on every lane of two warps, fast and
//! checked; gathers D by the same table and compares it with a plain
//! matrix product of the same inputs. Then: the verifier refuses an
//! instruction some lanes would skip, an instruction of another arch and
//! fragments of the wrong type; and hipcc's and nvcc's output of a kernel
//! holding each instruction contains it.
#![cfg(feature = "cpu")]

use std::path::Path;
use std::process::Command;

use attnforge_codegen::cpu::{compile, Arg, CpuKernel, CpuOptions};
use attnforge_codegen::ir::builder::KernelBuilder;
use attnforge_codegen::ir::mma::MmaInstr;
use attnforge_codegen::ir::verify::verify;
use attnforge_codegen::ir::{Access, Expr, Kernel, Scalar, Special};
use attnforge_codegen::target::Arch;
use half::{bf16, f16};

/// `(M, N, K)`, warp size, and which lane holds which element: `a(l, i)`
/// is `(row, k)` of A, `b(l, i)` is `(k, column)` of B, `c(l, i)` is
/// `(row, column)` of C and D.
struct Doc {
    instr: MmaInstr,
    arch: Arch,
    m: usize,
    n: usize,
    k: usize,
    warp: usize,
    a: fn(usize, usize) -> (usize, usize),
    b: fn(usize, usize) -> (usize, usize),
    c: fn(usize, usize) -> (usize, usize),
    /// Elements per lane: A, B, C.
    per_lane: (usize, usize, usize),
}

// AMD, v_mfma_f32_32x32x8{f16,bf16_1k}: "lane l, item i: A[l%32][4(l/32)+i],
// B[4(l/32)+i][l%32]; D item v: row 8(v/4) + 4(l/32) + v%4, column l%32".
fn mfma32_a(l: usize, i: usize) -> (usize, usize) {
    (l % 32, 4 * (l / 32) + i)
}
fn mfma32_b(l: usize, i: usize) -> (usize, usize) {
    (4 * (l / 32) + i, l % 32)
}
fn mfma32_c(l: usize, v: usize) -> (usize, usize) {
    (8 * (v / 4) + 4 * (l / 32) + v % 4, l % 32)
}
// AMD, v_mfma_f32_16x16x16{f16,bf16_1k}: "A[l%16][4(l/16)+i],
// B[4(l/16)+i][l%16]; D item v: row 4(l/16)+v, column l%16".
fn mfma16_a(l: usize, i: usize) -> (usize, usize) {
    (l % 16, 4 * (l / 16) + i)
}
fn mfma16_b(l: usize, i: usize) -> (usize, usize) {
    (4 * (l / 16) + i, l % 16)
}
fn mfma16_c(l: usize, v: usize) -> (usize, usize) {
    (4 * (l / 16) + v, l % 16)
}
// NVIDIA, mma.m16n8k16 (PTX ISA): groupID = laneid >> 2,
// threadID_in_group = laneid % 4.
// A: row = groupID for a0, a1, a4, a5, groupID + 8 for a2, a3, a6, a7;
//    col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
fn mma_a(l: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (l >> 2, l % 4);
    let row = if i < 2 || (4..6).contains(&i) {
        group
    } else {
        group + 8
    };
    let col = tig * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}
// B: row = threadID_in_group * 2 + (i & 1), plus 8 for i >= 2; col = groupID.
fn mma_b(l: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (l >> 2, l % 4);
    (tig * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, group)
}
// C/D: row = groupID for c0, c1, groupID + 8 for c2, c3;
//      col = threadID_in_group * 2 + (i & 1).
fn mma_c(l: usize, i: usize) -> (usize, usize) {
    let (group, tig) = (l >> 2, l % 4);
    (if i < 2 { group } else { group + 8 }, tig * 2 + (i & 1))
}

fn docs() -> Vec<Doc> {
    let mfma32 = |instr, arch| Doc {
        instr,
        arch,
        m: 32,
        n: 32,
        k: 8,
        warp: 64,
        a: mfma32_a,
        b: mfma32_b,
        c: mfma32_c,
        per_lane: (4, 4, 16),
    };
    let mfma16 = |instr, arch| Doc {
        instr,
        arch,
        m: 16,
        n: 16,
        k: 16,
        warp: 64,
        a: mfma16_a,
        b: mfma16_b,
        c: mfma16_c,
        per_lane: (4, 4, 4),
    };
    let mma = |instr, arch| Doc {
        instr,
        arch,
        m: 16,
        n: 8,
        k: 16,
        warp: 32,
        a: mma_a,
        b: mma_b,
        c: mma_c,
        per_lane: (8, 4, 4),
    };
    vec![
        mfma32(MmaInstr::Mfma32x32x8F16, Arch::Gfx90a),
        mfma32(MmaInstr::Mfma32x32x8Bf16, Arch::Gfx940),
        mfma16(MmaInstr::Mfma16x16x16F16, Arch::Gfx940),
        mfma16(MmaInstr::Mfma16x16x16Bf16, Arch::Gfx90a),
        mma(MmaInstr::Mma16x8x16F16, Arch::Sm90),
        mma(MmaInstr::Mma16x8x16Bf16, Arch::Sm80),
    ]
}

const WARPS: usize = 2;

/// One instruction per warp: each lane loads its fragments from `a`, `b`
/// and `c` (`per_lane` elements at `tid · per_lane`), runs it, and stores
/// its D fragment at the same place in `d`.
fn kernel(doc: &Doc) -> Kernel {
    let (pa, pb, pc) = doc.per_lane;
    let input = doc.instr.input();
    let mut b = KernelBuilder::new("mma_test", doc.arch.target(), (WARPS * doc.warp) as u32);
    let a_in = b.global("a", input, Access::Read);
    let b_in = b.global("b", input, Access::Read);
    let c_in = b.global("c", Scalar::F32, Access::Read);
    let d_out = b.global("d", Scalar::F32, Access::ReadWrite);
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    let at = |per: usize| tid.clone() * Expr::i32(per as i32);
    let fa = b.let_("fa", Expr::load(a_in, at(pa), pa as u8));
    let fb = b.let_("fb", Expr::load(b_in, at(pb), pb as u8));
    // C in 16-byte pieces.
    let pieces: Vec<Expr> = (0..pc / 4)
        .map(|j| {
            b.let_(
                &format!("c{j}"),
                Expr::load(c_in, at(pc) + Expr::i32(4 * j as i32), 4),
            )
        })
        .collect();
    let fc = if pc == 4 {
        pieces[0].clone()
    } else {
        Expr::Vector(
            (0..pc)
                .map(|v| pieces[v / 4].clone().lane((v % 4) as u8))
                .collect(),
        )
    };
    let d = b.mma("fd", doc.instr, fa, fb, fc);
    for j in 0..pc / 4 {
        let piece = Expr::Vector((0..4).map(|v| d.clone().lane((4 * j + v) as u8)).collect());
        b.store(d_out, at(pc) + Expr::i32(4 * j as i32), piece);
    }
    b.finish()
}

fn jit(k: &Kernel, checked: bool) -> CpuKernel {
    let a = verify(k).unwrap_or_else(|e| panic!("{e}"));
    compile(k, &a, CpuOptions { checked }).unwrap_or_else(|e| panic!("{e}"))
}

/// A small deterministic generator.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }
}

/// Runs `doc`'s instruction on random inputs and checks every element of D
/// of every warp.
fn check(doc: &Doc, checked: bool, seed: u64) {
    let (pa, pb, pc) = doc.per_lane;
    assert_eq!(doc.m * doc.k, pa * doc.warp);
    assert_eq!(doc.k * doc.n, pb * doc.warp);
    assert_eq!(doc.m * doc.n, pc * doc.warp);
    let bf = doc.instr.input() == Scalar::BF16;
    // The inputs as the instruction sees them (rounded to f16 or bf16).
    let round = |x: f32| {
        if bf {
            bf16::from_f32(x).to_f32()
        } else {
            f16::from_f32(x).to_f32()
        }
    };
    let mut rng = Lcg(seed);
    let threads = WARPS * doc.warp;
    let (mut a_lanes, mut b_lanes) = (vec![0f32; threads * pa], vec![0f32; threads * pb]);
    let mut c_lanes = vec![0f32; threads * pc];
    let mut want = vec![0f32; threads * pc];
    for w in 0..WARPS {
        let a: Vec<f32> = (0..doc.m * doc.k).map(|_| round(rng.next())).collect();
        let b: Vec<f32> = (0..doc.k * doc.n).map(|_| round(rng.next())).collect();
        let c: Vec<f32> = (0..doc.m * doc.n).map(|_| rng.next() * 8.0).collect();
        for l in 0..doc.warp {
            let t = w * doc.warp + l;
            for i in 0..pa {
                let (r, k) = (doc.a)(l, i);
                a_lanes[t * pa + i] = a[r * doc.k + k];
            }
            for i in 0..pb {
                let (k, col) = (doc.b)(l, i);
                b_lanes[t * pb + i] = b[k * doc.n + col];
            }
            for v in 0..pc {
                let (r, col) = (doc.c)(l, v);
                c_lanes[t * pc + v] = c[r * doc.n + col];
                // D = A·B + C: C, then each product in increasing k, in f32
                // (products of f16 or bf16 values are exact in f32).
                let mut acc = c[r * doc.n + col];
                let mut exact = acc as f64;
                let mut mag = acc.abs() as f64;
                for k in 0..doc.k {
                    let (x, y) = (a[r * doc.k + k], b[k * doc.n + col]);
                    acc = x.mul_add(y, acc);
                    exact += x as f64 * y as f64;
                    mag += (x as f64 * y as f64).abs();
                }
                // The order of the sum is the only freedom the products leave.
                assert!((acc as f64 - exact).abs() <= 1e-6 * mag, "{acc} vs {exact}");
                want[t * pc + v] = acc;
            }
        }
    }
    let k = jit(&kernel(doc), checked);
    let mut d = vec![f32::NAN; threads * pc];
    let launch = |args: &mut [Arg<'_>]| {
        if checked {
            k.launch_checked([1, 1, 1], args)
        } else {
            // SAFETY: every buffer holds each thread's fragments, exactly
            // what the kernel reads and writes at `tid · per_lane`.
            unsafe { k.launch([1, 1, 1], args) }
        }
    };
    let r = if bf {
        let a: Vec<bf16> = a_lanes.iter().map(|&x| bf16::from_f32(x)).collect();
        let b: Vec<bf16> = b_lanes.iter().map(|&x| bf16::from_f32(x)).collect();
        launch(&mut [
            Arg::input(&a),
            Arg::input(&b),
            Arg::input(&c_lanes),
            Arg::output(&mut d),
        ])
    } else {
        let a: Vec<f16> = a_lanes.iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<f16> = b_lanes.iter().map(|&x| f16::from_f32(x)).collect();
        launch(&mut [
            Arg::input(&a),
            Arg::input(&b),
            Arg::input(&c_lanes),
            Arg::output(&mut d),
        ])
    };
    r.unwrap_or_else(|e| panic!("{} {}: {e}", doc.instr, doc.arch));
    for t in 0..threads {
        for v in 0..pc {
            let (got, w) = (d[t * pc + v], want[t * pc + v]);
            assert!(
                got.to_bits() == w.to_bits(),
                "{} on {} ({}): warp {} lane {} element {v} {:?}: {got} != {w}",
                doc.instr,
                doc.arch,
                if checked { "checked" } else { "fast" },
                t / doc.warp,
                t % doc.warp,
                (doc.c)(t % doc.warp, v),
            );
        }
    }
}

#[test]
fn every_instruction_computes_a_times_b_plus_c_in_its_documented_layout() {
    for (i, doc) in docs().iter().enumerate() {
        check(doc, false, 1 + i as u64);
        check(doc, true, 100 + i as u64);
    }
}

/// The verifier's refusals, each in its own words.
#[test]
fn the_verifier_refuses_partial_warps_foreign_archs_and_wrong_fragments() {
    let errors = |k: Kernel| match verify(&k) {
        Ok(_) => panic!("`{}` verified", k.name),
        Err(e) => e.to_string(),
    };
    // Lanes 0..16 only: the others would not hand in their fragments.
    let mut b = KernelBuilder::new("partial", Arch::Sm90.target(), 32);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let lane = Expr::special(Special::LaneId);
    let a = Expr::Vector((0..8).map(|_| Expr::f32(1.0).cast(Scalar::F16)).collect());
    let bb = Expr::Vector((0..4).map(|_| Expr::f32(1.0).cast(Scalar::F16)).collect());
    let c = Expr::Vector((0..4).map(|_| Expr::f32(0.0)).collect());
    b.if_(lane.clone().lt(Expr::i32(16)), |b| {
        let d = b.mma(
            "d",
            MmaInstr::Mma16x8x16F16,
            a.clone(),
            bb.clone(),
            c.clone(),
        );
        b.store(out, lane.clone() * Expr::i32(4), d);
    });
    let msg = errors(b.finish());
    assert!(msg.contains("under thread-varying control flow"), "{msg}");
    assert!(msg.contains("mma.sync.aligned.m16n8k16"), "{msg}");

    // Under warp-uniform control flow the same instruction is fine.
    let mut b = KernelBuilder::new("whole_warps", Arch::Sm90.target(), 64);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let warp = Expr::special(Special::WarpId);
    b.if_(warp.eq_(Expr::i32(1)), |b| {
        let d = b.mma(
            "d",
            MmaInstr::Mma16x8x16F16,
            a.clone(),
            bb.clone(),
            c.clone(),
        );
        b.store(out, lane.clone() * Expr::i32(4), d);
    });
    verify(&b.finish()).unwrap_or_else(|e| panic!("{e}"));

    // An MFMA in an NVIDIA kernel, an mma.sync in a wave64 one, and neither
    // on RDNA2.
    for (arch, instr) in [
        (Arch::Sm90, MmaInstr::Mfma16x16x16F16),
        (Arch::Gfx90a, MmaInstr::Mma16x8x16F16),
        (Arch::Gfx1030, MmaInstr::Mma16x8x16F16),
    ] {
        let mut b = KernelBuilder::new("foreign", arch.target(), arch.target().warp_size);
        let out = b.global("out", Scalar::F32, Access::ReadWrite);
        let (pa, pb, pc) = (instr.lanes(attnforge_codegen::ir::mma::Operand::A), 4, 4);
        let a = Expr::Vector((0..pa).map(|_| Expr::f32(1.0).cast(Scalar::F16)).collect());
        let bb = Expr::Vector((0..pb).map(|_| Expr::f32(1.0).cast(Scalar::F16)).collect());
        let c = Expr::Vector((0..pc).map(|_| Expr::f32(0.0)).collect());
        let d = b.mma("d", instr, a, bb, c);
        b.store(out, Expr::special(Special::LaneId) * Expr::i32(4), d);
        let msg = errors(b.finish());
        assert!(
            msg.contains(&format!("is not an instruction of {arch}")),
            "{msg}"
        );
    }

    // Fragments of the wrong type and length.
    let mut b = KernelBuilder::new("wrong", Arch::Gfx90a.target(), 64);
    let out = b.global("out", Scalar::F32, Access::ReadWrite);
    let a = Expr::Vector((0..4).map(|_| Expr::f32(1.0)).collect());
    let bb = Expr::Vector((0..8).map(|_| Expr::f32(1.0).cast(Scalar::BF16)).collect());
    let c = Expr::Vector((0..4).map(|_| Expr::f32(0.0)).collect());
    let d = b.mma("d", MmaInstr::Mfma16x16x16Bf16, a, bb, c);
    b.store(out, Expr::special(Special::LaneId) * Expr::i32(4), d);
    let msg = errors(b.finish());
    assert!(
        msg.contains("the A fragment must be bf16x4, got f32x4"),
        "{msg}"
    );
    assert!(
        msg.contains("the B fragment must be bf16x4, got bf16x8"),
        "{msg}"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The printed kernels compile, and the compilers' output holds the
/// instructions: hipcc's code objects for gfx90a and gfx940 disassemble to
/// `v_mfma_*`, nvcc's PTX for sm_80 and sm_90 holds `mma.sync`. The test
/// command installs both compilers; without them this fails.
#[test]
fn hipcc_and_nvcc_emit_the_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let hipcc = attnforge_codegen::build::find_hipcc()
        .expect("no hipcc: run scripts/setup.sh (it installs hipcc)");
    let nvcc = attnforge_codegen::build::find_nvcc()
        .expect("no nvcc: run scripts/setup.sh (it installs NVIDIA's compiler from PyPI)");
    for (count, trans) in [(4u8, true), (2, false)] {
        let mut text = String::new();
        attnforge_codegen::hip::print(&ldmatrix_kernel(count, trans, 512), &[], &mut text).unwrap();
        let src = dir.path().join(format!("ldsm{count}{trans}.cu"));
        std::fs::write(&src, &text).unwrap();
        for arch in Arch::NVIDIA {
            let ptx = dir.path().join(format!("ldsm{count}{trans}_{arch}.ptx"));
            run(Command::new(&nvcc)
                .arg(format!("-arch={arch}"))
                .args(["-ptx", "-O3"])
                .arg(&src)
                .arg("-o")
                .arg(&ptx));
            let want = format!(
                "ldmatrix.sync.aligned.m8n8.x{count}{}.shared.b16",
                if trans { ".trans" } else { "" }
            );
            let ptx = std::fs::read_to_string(&ptx).unwrap();
            assert!(ptx.contains(&want), "no `{want}` for {arch}");
        }
    }
    for doc in docs() {
        let k = kernel(&doc);
        let mut text = String::new();
        attnforge_codegen::hip::print(&k, &[], &mut text).unwrap();
        let stem = format!("{:?}_{}", doc.instr, doc.arch).to_lowercase();
        for arch in Arch::ALL.into_iter().filter(|a| doc.instr.available_on(*a)) {
            let dis = if doc.arch.vendor() == Some(attnforge_codegen::target::Vendor::Amd) {
                let src = dir.path().join(format!("{stem}.hip"));
                std::fs::write(&src, &text).unwrap();
                let obj = dir.path().join(format!("{stem}_{arch}.o"));
                run(Command::new(&hipcc)
                    .args(["--genco", "-O3", "--no-gpu-bundle-output"])
                    .arg(format!("--offload-arch={arch}"))
                    .arg(&src)
                    .arg("-o")
                    .arg(&obj)
                    .env("TMPDIR", dir.path()));
                run(Command::new("llvm-objdump-15").arg("-d").arg(&obj))
            } else {
                let src = dir.path().join(format!("{stem}.cu"));
                std::fs::write(&src, &text).unwrap();
                let ptx = dir.path().join(format!("{stem}_{arch}.ptx"));
                run(Command::new(&nvcc)
                    .arg(format!("-arch={arch}"))
                    .args(["-ptx", "-O3"])
                    .arg(&src)
                    .arg("-o")
                    .arg(&ptx));
                std::fs::read_to_string(Path::new(&ptx)).unwrap()
            };
            // gfx940's disassembler spells the bf16 forms `_bf16`.
            let mnemonic = doc.instr.mnemonic();
            let want = match arch {
                Arch::Gfx940 => mnemonic
                    .replace("8bf16_1k", "8_bf16")
                    .replace("16bf16_1k", "16_bf16"),
                _ => mnemonic.to_string(),
            };
            assert!(
                dis.contains(&want),
                "{} for {arch}: no `{want}` in\n{dis}",
                doc.instr
            );
        }
    }
}

/// PTX ISA, "ldmatrix": threads 8i..8i+7 give the addresses of the eight
/// rows of matrix i; thread t receives, in its register i, the elements
/// (row t/4, columns 2·(t%4) and 2·(t%4)+1) of matrix i, or with `.trans`
/// those of the transposed matrix (rows 2·(t%4), 2·(t%4)+1, column t/4).
fn ldmatrix_doc(smem: &[u16], rows: &[i32], t: usize, count: usize, trans: bool) -> Vec<u16> {
    let (warp, lane) = (t / 32, t % 32);
    let mut out = Vec::new();
    for i in 0..count {
        for e in 0..2 {
            let (r, c) = if trans {
                (2 * (lane % 4) + e, lane / 4)
            } else {
                (lane / 4, 2 * (lane % 4) + e)
            };
            let row = rows[warp * 32 + 8 * i + r] as usize;
            out.push(smem[row + c]);
        }
    }
    out
}

/// A kernel of two warps: the block copies `src` into shared memory, each
/// lane names row `rows[tid]`, and `ldmatrix` hands each lane its elements,
/// stored at `out[tid · 2·count..]`.
fn ldmatrix_kernel(count: u8, trans: bool, len: u32) -> Kernel {
    let mut b = KernelBuilder::new("ldsm", Arch::Sm90.target(), 64);
    let src = b.global("src", Scalar::F16, Access::Read);
    let rows = b.global("rows", Scalar::I32, Access::Read);
    let out = b.global("out", Scalar::F16, Access::ReadWrite);
    let sm = b.shared("sm", Scalar::F16, len);
    let tid = b.let_("tid", Expr::special(Special::ThreadIdx));
    b.for_(
        "i",
        tid.clone(),
        Expr::i32(len as i32),
        Expr::i32(64),
        |b, i| {
            b.store(sm, i.clone(), Expr::load(src, i, 1));
        },
    );
    b.barrier();
    let row = b.let_("row", Expr::load(rows, tid.clone(), 1));
    let v = b.load_matrix("v", sm, row, count, trans);
    for j in 0..2 * count {
        b.store(
            out,
            tid.clone() * Expr::i32(2 * count as i32) + Expr::i32(j as i32),
            v.clone().lane(j),
        );
    }
    b.finish()
}

#[test]
fn ldmatrix_hands_each_lane_its_documented_elements() {
    let len: usize = 64 * 8;
    let mut rng = Lcg(9);
    let smem: Vec<u16> = (0..len)
        .map(|_| f16::from_f32(rng.next()).to_bits())
        .collect();
    let src: Vec<f16> = smem.iter().map(|&b| f16::from_bits(b)).collect();
    // Rows anywhere in the buffer, 16-byte aligned, repeats allowed.
    let rows: Vec<i32> = (0..64).map(|t| ((t * 37 + 11) % 64) * 8).collect();
    for count in [1u8, 2, 4] {
        for trans in [false, true] {
            let k = ldmatrix_kernel(count, trans, len as u32);
            for checked in [false, true] {
                let cpu = jit(&k, checked);
                let mut out = vec![f16::NAN; 64 * 2 * count as usize];
                let mut args = [Arg::input(&src), Arg::input(&rows), Arg::output(&mut out)];
                if checked {
                    cpu.launch_checked([1, 1, 1], &mut args).unwrap();
                } else {
                    // SAFETY: every row index is within the shared buffer
                    // (a multiple of 8 below its length).
                    unsafe { cpu.launch([1, 1, 1], &mut args) }.unwrap();
                }
                for t in 0..64 {
                    let want = ldmatrix_doc(&smem, &rows, t, count as usize, trans);
                    let n = 2 * count as usize;
                    let got: Vec<u16> = out[t * n..][..n].iter().map(|x| x.to_bits()).collect();
                    assert_eq!(
                        got, want,
                        "x{count} trans {trans} checked {checked} lane {t}"
                    );
                }
            }
        }
    }
    // A row past the buffer is reported by checked mode.
    let k = ldmatrix_kernel(4, false, len as u32);
    let bad: Vec<i32> = (0..64)
        .map(|t| if t == 13 { len as i32 } else { 0 })
        .collect();
    let mut out = vec![f16::ZERO; 64 * 8];
    let r = jit(&k, true).launch_checked(
        [1, 1, 1],
        &mut [Arg::input(&src), Arg::input(&bad), Arg::output(&mut out)],
    );
    assert!(r.is_err(), "an out-of-bounds ldmatrix row went unreported");
    // NVIDIA only, and from shared memory.
    let mut b = KernelBuilder::new("amd", Arch::Gfx90a.target(), 64);
    let sm = b.shared("sm", Scalar::F16, 64);
    let out = b.global("out", Scalar::F16, Access::ReadWrite);
    let v = b.load_matrix("v", sm, Expr::i32(0), 1, false);
    b.store(out, Expr::special(Special::ThreadIdx), v.lane(0));
    let msg = verify(&b.finish()).unwrap_err().to_string();
    assert!(
        msg.contains("`ldmatrix` is not an instruction of gfx90a"),
        "{msg}"
    );
}
