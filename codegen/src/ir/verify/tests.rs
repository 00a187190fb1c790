use super::*;
use crate::ir::builder::KernelBuilder;
use crate::target::Arch;

fn builder(arch: Arch) -> KernelBuilder {
    let t = arch.target();
    KernelBuilder::new("t", t, t.warp_size * 2)
}

fn tid() -> Expr {
    Expr::special(Special::ThreadIdx)
}

fn messages(k: &Kernel) -> Vec<String> {
    match verify(k) {
        Ok(_) => vec![],
        Err(e) => e.0.into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn barrier_under_block_uniform_if_is_accepted() {
    let mut b = builder(Arch::Gfx90a);
    let blk = Expr::special(Special::BlockIdx(Dim::X));
    b.if_(blk.lt(Expr::i32(4)), |b| b.barrier());
    let k = b.finish();
    assert_eq!(messages(&k), Vec::<String>::new());
}

#[test]
fn barrier_under_thread_varying_if_is_rejected() {
    let mut b = builder(Arch::Gfx90a);
    b.if_(tid().lt(Expr::i32(4)), |b| b.barrier());
    let m = messages(&b.finish());
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("barrier under thread-varying"), "{m:?}");
}

#[test]
fn barrier_under_warp_uniform_if_is_rejected() {
    let mut b = builder(Arch::Gfx1030);
    let w = Expr::special(Special::WarpId);
    b.if_(w.eq_(Expr::i32(0)), |b| b.barrier());
    let m = messages(&b.finish());
    assert!(m[0].contains("warp-uniform"), "{m:?}");
}

#[test]
fn collective_under_warp_uniform_if_is_accepted() {
    let mut b = builder(Arch::Gfx90a);
    let w = Expr::special(Special::WarpId);
    b.if_(w.eq_(Expr::i32(0)), |b| {
        b.collective("s", Collective::WarpSum, Expr::f32(1.0));
    });
    assert!(verify(&b.finish()).is_ok());
}

#[test]
fn collective_under_thread_varying_loop_is_rejected() {
    let mut b = builder(Arch::Gfx90a);
    b.for_("i", tid(), Expr::i32(100), Expr::i32(64), |b, i| {
        b.collective("s", Collective::WarpMax, i);
    });
    let m = messages(&b.finish());
    assert!(
        m[0].contains("warp collective under thread-varying"),
        "{m:?}"
    );
}

#[test]
fn uniformity_flows_through_loop_carried_assignments() {
    // x starts uniform but becomes thread-varying inside a while loop; the
    // barrier under `if x` after the loop must then be rejected.
    let mut b = builder(Arch::Gfx90a);
    let x = b.var("x", Expr::i32(0));
    let n = b.var("n", Expr::i32(0));
    b.while_(Expr::Var(n).lt(Expr::i32(3)), |b| {
        b.set(n, Expr::Var(n) + Expr::i32(1));
        b.set(x, Expr::Var(x) + Expr::Var(n));
        b.if_(Expr::Var(n).eq_(Expr::i32(2)), |b| b.set(x, tid()));
    });
    b.if_(Expr::Var(x).gt(Expr::i32(0)), |b| b.barrier());
    let k = b.finish();
    assert!(messages(&k)[0].contains("barrier"));
    // and without the thread-varying assignment the kernel is fine
    let mut b = builder(Arch::Gfx90a);
    let x = b.var("x", Expr::i32(0));
    b.while_(Expr::Var(x).lt(Expr::i32(3)), |b| {
        b.set(x, Expr::Var(x) + Expr::i32(1))
    });
    b.if_(Expr::Var(x).gt(Expr::i32(0)), |b| b.barrier());
    let k = b.finish();
    let a = verify(&k).unwrap();
    assert_eq!(a.of(x), Uniformity::Block);
}

#[test]
fn warp_reduction_is_warp_uniform_and_shuffle_is_not() {
    let mut b = builder(Arch::Gfx90a);
    let v = b.let_("v", tid().cast(Scalar::F32));
    let s = b.collective("s", Collective::WarpSum, v.clone());
    let x = b.shfl_xor("x", v, 1, 64);
    let k = b.finish();
    let a = verify(&k).unwrap();
    let id = |e: &Expr| match e {
        Expr::Var(v) => *v,
        _ => unreachable!(),
    };
    assert_eq!(a.of(id(&s)), Uniformity::Warp);
    assert_eq!(a.of(id(&x)), Uniformity::Thread);
}

#[test]
fn shuffle_width_is_checked_against_the_target() {
    let mut b = builder(Arch::Gfx1030);
    b.shfl_xor("x", Expr::f32(1.0), 1, 64);
    b.shfl_xor("y", Expr::f32(1.0), 1, 24);
    let m = messages(&b.finish());
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m.iter().all(|m| m.contains("power of two")));
}

#[test]
fn shared_memory_over_the_limit_is_rejected() {
    let mut b = builder(Arch::Gfx90a);
    b.shared("big", Scalar::F32, 16 * 1024 + 1);
    let m = messages(&b.finish());
    assert!(m[0].contains("exceeds the 65536 bytes"), "{m:?}");
    let mut b = builder(Arch::Gfx90a);
    b.shared("fits", Scalar::F32, 16 * 1024);
    assert!(verify(&b.finish()).is_ok());
}

#[test]
fn type_errors_are_all_reported_together() {
    let mut b = builder(Arch::Gfx90a);
    let out = b.global("out", Scalar::F16, Access::Read);
    b.let_("bad_add", Expr::f32(1.0) + Expr::i32(1));
    b.store(out, Expr::i32(0), Expr::f32(1.0));
    b.if_(Expr::i32(1), |_| {});
    b.let_(
        "half_math",
        Expr::load(out, Expr::i32(0), 1) * Expr::load(out, Expr::i32(0), 1),
    );
    b.let_("too_wide", Expr::load(out, Expr::i32(0), 16));
    let m = messages(&b.finish());
    assert_eq!(m.len(), 6, "{m:#?}");
    assert!(m[0].contains("mismatched types f32 and i32"));
    assert!(m.iter().any(|m| m.contains("read-only buffer")));
    assert!(m
        .iter()
        .any(|m| m.contains("storing f32 into a buffer of f16")));
    assert!(m.iter().any(|m| m.contains("if condition must be bool")));
    assert!(m.iter().any(|m| m.contains("Mul is not defined on f16")));
    assert!(m.iter().any(|m| m.contains("f16x16 is 32 bytes")), "{m:#?}");
}

#[test]
fn vector_accesses_are_at_most_16_bytes() {
    let mut b = builder(Arch::Gfx90a);
    let x = b.global("x", Scalar::F32, Access::Read);
    b.let_("ok", Expr::load(x, Expr::i32(0), 4));
    b.let_("wide", Expr::load(x, Expr::i32(0), 8));
    // 16 one-byte lanes are one 16-byte access (fp8 rows); 3 lanes are no
    // vector at all.
    let f8 = b.global("f8", Scalar::F8E4M3, Access::Read);
    b.let_("fp8_row", Expr::load(f8, Expr::i32(0), 16));
    b.let_("three", Expr::load(f8, Expr::i32(0), 3));
    let m = messages(&b.finish());
    assert_eq!(m.len(), 2, "{m:#?}");
    assert!(m[0].contains("32 bytes"), "{m:?}");
    assert!(m[1].contains("3 lanes"), "{m:?}");
}

#[test]
fn scoping_is_checked() {
    let mut b = builder(Arch::Gfx90a);
    let mut inner = None;
    b.if_(Expr::bool(true), |b| {
        inner = Some(b.let_("inner", Expr::i32(1)))
    });
    b.let_("outer", inner.unwrap());
    let m = messages(&b.finish());
    assert!(m[0].contains("used outside its scope"), "{m:?}");
}

#[test]
fn block_size_must_be_whole_warps() {
    let k = KernelBuilder::new("t", Arch::Gfx90a.target(), 96).finish();
    assert!(messages(&k)[0].contains("multiple of the warp size 64"));
    let k = KernelBuilder::new("t", Arch::Gfx1030.target(), 96).finish();
    assert!(verify(&k).is_ok());
}

#[test]
fn local_arrays_indexed_by_unroll_variables_are_accepted() {
    let mut b = builder(Arch::Gfx90a);
    let acc = b.local("acc", Scalar::F32, 16);
    b.unroll("i", 4, |b, i| {
        b.unroll("j", 4, |b, j| {
            let at = b.let_("at", i.clone() * Expr::i32(4) + j);
            b.store(acc, at, Expr::f32(1.0));
        });
        // A 4-lane access at a multiple of 4.
        let v = Expr::load(acc, i * Expr::i32(4), 4);
        b.store(acc, Expr::i32(0), v.lane(3));
    });
    assert_eq!(messages(&b.finish()), Vec::<String>::new());
}

#[test]
fn local_arrays_out_of_bounds_unprovable_or_misaligned_are_rejected() {
    let mut b = builder(Arch::Gfx90a);
    let acc = b.local("acc", Scalar::F32, 8);
    b.unroll("i", 9, |b, i| b.store(acc, i, Expr::f32(0.0)));
    b.store(acc, tid(), Expr::f32(0.0));
    b.unroll("i", 2, |b, i| {
        let v = Expr::load(acc, i + Expr::i32(1), 4);
        b.store(acc, Expr::i32(0), v.lane(0));
    });
    let m = messages(&b.finish());
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m[0].contains("accessed at 0..=8"), "{m:?}");
    assert!(m[1].contains("cannot bound"), "{m:?}");
    assert!(m[2].contains("not provably a multiple of 4"), "{m:?}");
}

#[test]
fn local_loads_are_thread_varying_and_unroll_loops_are_uniform() {
    // A collective inside an unrolled loop is fine (its variable is
    // block-uniform); a branch on a local's value is thread-varying.
    let mut b = builder(Arch::Gfx90a);
    let x = b.local_filled("x", Scalar::F32, 2, Expr::f32(1.0));
    b.unroll("i", 2, |b, i| {
        b.shfl_xor("s", Expr::load(x, i, 1), 1, 64);
    });
    b.if_(Expr::load(x, Expr::i32(0), 1).gt(Expr::f32(0.0)), |b| {
        b.barrier()
    });
    let m = messages(&b.finish());
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].contains("barrier under thread-varying"), "{m:?}");
}

#[test]
fn local_arrays_beyond_a_gpu_threads_registers_are_rejected() {
    let mut b = builder(Arch::Gfx1030);
    b.local("big", Scalar::F32, 4096);
    let m = messages(&b.finish());
    assert!(
        m[0].contains("exceed the 8192 bytes gfx1030 gives a thread"),
        "{m:?}"
    );
    let mut b = KernelBuilder::new("t", Arch::Host.target(), 1);
    b.local("big", Scalar::F32, 4096);
    assert_eq!(messages(&b.finish()), Vec::<String>::new());
}

#[test]
fn vector_arithmetic_is_f32_and_elementwise() {
    let mut b = builder(Arch::Gfx90a);
    let v = b.let_("v", Expr::Vector(vec![Expr::f32(1.0); 8]));
    b.let_(
        "w",
        v.clone().fma(v.clone(), v.clone()).max(v.clone()).exp2() * v.clone(),
    );
    let h = b.global("h", Scalar::F16, Access::Read);
    b.let_(
        "x",
        Expr::load(h, Expr::i32(0), 8).cast(Scalar::F32) + v.clone(),
    );
    assert_eq!(messages(&b.finish()), Vec::<String>::new());
    let mut b = builder(Arch::Gfx90a);
    let iv = b.let_("iv", Expr::Vector(vec![Expr::i32(1); 4]));
    b.let_("y", iv.clone() + iv);
    let v = b.let_("v", Expr::Vector(vec![Expr::f32(1.0); 4]));
    b.let_("z", v.tanh());
    let m = messages(&b.finish());
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[0].contains("scalar operands, got i32x4"), "{m:?}");
    assert!(m[1].contains("Tanh is not defined on f32x4"), "{m:?}");
}

#[test]
fn global_vector_accesses_are_16_bytes_on_a_gpu_and_64_on_the_host() {
    let access = |arch: Arch, lanes: u8, elem: Scalar| {
        let t = arch.target();
        let mut b = KernelBuilder::new("t", t, t.warp_size);
        let x = b.global("x", elem, Access::Read);
        let y = b.global("y", elem, Access::ReadWrite);
        let v = b.let_("v", Expr::load(x, Expr::i64(0), lanes));
        b.store(y, Expr::i64(0), v);
        messages(&b.finish())
    };
    for arch in [Arch::Gfx90a, Arch::Gfx1030, Arch::Sm90] {
        assert_eq!(access(arch, 8, Scalar::F16), Vec::<String>::new());
        let m = access(arch, 16, Scalar::F16);
        assert!(
            m.len() == 2 && m[0].contains("at most 16 bytes"),
            "{arch}: {m:?}"
        );
    }
    assert_eq!(access(Arch::Host, 16, Scalar::F16), Vec::<String>::new());
    assert_eq!(access(Arch::Host, 16, Scalar::F32), Vec::<String>::new());
    let m = access(Arch::Host, 16, Scalar::I64);
    assert!(m.len() == 2 && m[0].contains("at most 64 bytes"), "{m:?}");
    // 32 lanes only at the host target, and in memory only within 64 bytes.
    assert_eq!(access(Arch::Host, 32, Scalar::F8E4M3), Vec::<String>::new());
    assert_eq!(access(Arch::Host, 32, Scalar::F16), Vec::<String>::new());
    let m = access(Arch::Host, 32, Scalar::F32);
    assert!(!m.is_empty() && m[0].contains("at most 64 bytes"), "{m:?}");
    for arch in [Arch::Gfx90a, Arch::Sm90] {
        let m = access(arch, 32, Scalar::F8E4M3);
        assert!(m.len() == 2 && m[0].contains("32 lanes"), "{arch}: {m:?}");
    }
}
