//! Every code object built at build time is an AMDGPU ELF for its arch and
//! holds its kernel: the function symbol and its `.kd` kernel descriptor.

use attnforge::codegen::codeobj::{parse_elf, EM_AMDGPU};
use attnforge::codegen::kernels::symbol;
use attnforge::{Arch, HipKernels};

#[test]
fn every_bundled_kernel_has_a_code_object_per_arch() {
    if !cfg!(feature = "hip") {
        println!(
            "skipped: attnforge was built without its `hip` feature, so no code objects exist"
        );
        return;
    }
    let mut checked = 0;
    for b in attnforge::kernels::ALL {
        assert!(
            matches!(b.hip, HipKernels::Built(_)),
            "{}: {:?}",
            b.name,
            b.hip
        );
        for (spec, arch) in b
            .kernels()
            .into_iter()
            .flat_map(|s| Arch::ALL.map(|a| (s, a)))
        {
            let sym = symbol(&spec);
            let object = b
                .hip
                .find(spec.kind(), arch)
                .unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(object.symbol, sym);
            let elf = parse_elf(object.bytes)
                .unwrap_or_else(|e| panic!("{} for {arch}: not an ELF: {e}", b.name));
            assert_eq!(elf.machine, EM_AMDGPU, "{} for {arch}", b.name);
            assert_eq!(
                elf.arch(),
                Some(arch.name()),
                "{}: e_flags {:#x}",
                b.name,
                elf.flags
            );
            assert!(
                elf.has_kernel(&sym),
                "{} for {arch}: no `{sym}` and `{sym}.kd` among {:?}",
                b.name,
                elf.symbols
            );
            checked += 1;
        }
    }
    // 6 layouts (append) + 7 attentions (decode, prefill, split-K decode,
    // merge), 3 archs each.
    assert_eq!(checked, (6 + 7 * 4) * 3);
    // The crate-wide list holds each distinct object once (two attentions
    // with the same query heads, head_dim and dtype share a merge).
    let distinct: std::collections::HashSet<(String, Arch)> = attnforge::kernels::ALL
        .iter()
        .flat_map(|b| b.kernels())
        .flat_map(|s| Arch::ALL.map(|a| (symbol(&s), a)))
        .collect();
    assert_eq!(attnforge::kernels::CODE_OBJECTS.len(), distinct.len());
}

#[test]
fn items_without_a_build_helper_say_so() {
    use attnforge::prelude::*;

    #[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16)]
    struct LocalKv;

    // This test crate has no build script: no code objects, and a reason.
    let err = LocalKv::HIP
        .find(KernelKind::Append, Arch::Gfx90a)
        .unwrap_err();
    assert!(err.contains("build.rs"), "{err}");
}
