//! Every code object built at build time is an AMDGPU ELF (or, for the
//! NVIDIA archs, a cubin) for its arch and holds its kernel: the function
//! symbol, its `.kd` kernel descriptor, and its resources in the metadata
//! note (ptxas's report for cubins). No bundled kernel spills on any arch.

use attnforge::codegen::codeobj::{occupancy, parse_elf, EM_AMDGPU};
use attnforge::codegen::cubin::{parse_cubin, parse_ptxas_log, EM_CUDA};
use attnforge::codegen::kernels::{generate, symbol, KernelSpec};
use attnforge::{Arch, KernelKind};

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
        assert_eq!(b.objects.hip, None, "{}", b.name);
        for (spec, arch) in b
            .kernels()
            .into_iter()
            .flat_map(|s| Arch::AMD.map(|a| (s, a)))
        {
            let sym = symbol(&spec);
            let object = b
                .objects
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
            // Its metadata names it, with an occupancy at its block size.
            let r = elf
                .kernel_resources(&sym)
                .unwrap_or_else(|| panic!("{} for {arch}: no metadata for `{sym}`", b.name));
            let waves = occupancy(arch.name(), r, r.max_flat_workgroup_size);
            assert!(waves.is_some(), "{} for {arch}: {r:?}", b.name);
            checked += 1;
        }
    }
    // 6 layouts (append) + 7 attentions (decode, prefill, split-K decode,
    // merge), 3 archs each.
    assert_eq!(checked, (6 + 7 * 4) * 3);
    // The crate-wide list holds each distinct object once (two attentions
    // with the same query heads, head_dim and dtype share a merge).
    let archs: &[Arch] = if cfg!(feature = "cuda") {
        &Arch::ALL
    } else {
        &Arch::AMD
    };
    let distinct: std::collections::HashSet<(String, Arch)> = attnforge::kernels::ALL
        .iter()
        .flat_map(|b| b.kernels())
        .flat_map(|s| archs.iter().map(move |&a| (symbol(&s), a)))
        .collect();
    assert_eq!(attnforge::kernels::CODE_OBJECTS.len(), distinct.len());
}

#[test]
fn every_bundled_kernel_has_a_cubin_for_sm_80_and_sm_90() {
    if !cfg!(feature = "cuda") {
        println!("skipped: attnforge was built without its `cuda` feature, so no cubins exist");
        return;
    }
    let mut checked = 0;
    for b in attnforge::kernels::ALL {
        assert_eq!(b.objects.cuda, None, "{}", b.name);
        for spec in b.kernels() {
            for arch in Arch::NVIDIA {
                let sym = symbol(&spec);
                let object = b
                    .objects
                    .find(spec.kind(), arch)
                    .unwrap_or_else(|e| panic!("{}: {e}", b.name));
                assert_eq!((object.symbol, object.arch), (&sym[..], arch));
                let cubin = parse_cubin(object.bytes)
                    .unwrap_or_else(|e| panic!("{} for {arch}: not a cubin: {e}", b.name));
                assert_eq!(cubin.elf.machine, EM_CUDA);
                assert_eq!(
                    cubin.arch(),
                    arch.name(),
                    "{}: e_flags {:#x}",
                    b.name,
                    cubin.elf.flags
                );
                assert!(
                    cubin.has_function(&sym),
                    "{sym} for {arch}: {:?}",
                    cubin.elf.symbols
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, (6 + 7 * 4) * 2);
}

/// An attention item's constant also finds its layout's append, so one
/// item's registry serves every kernel a device loads for it.
#[test]
fn an_attention_items_objects_include_its_layouts_append() {
    use attnforge::kernels::specs::{Llama3, Llama3Kv};
    use attnforge::{Attention, KernelKind, KvLayout};
    if !cfg!(feature = "hip") {
        println!("skipped: attnforge was built without its `hip` feature");
        return;
    }
    let archs: &[Arch] = if cfg!(feature = "cuda") {
        &Arch::ALL
    } else {
        &Arch::AMD
    };
    for &arch in archs {
        let ours = Llama3::CODE_OBJECTS.find(KernelKind::Append, arch).unwrap();
        let layouts = Llama3Kv::CODE_OBJECTS
            .find(KernelKind::Append, arch)
            .unwrap();
        assert_eq!(ours.symbol, symbol(&KernelSpec::Append(Llama3::SPEC.kv)));
        assert_eq!(ours.bytes, layouts.bytes, "{arch}");
    }
}

/// The bundled specs through the build helper, every arch, with the shared
/// object cache the kernels crate's build script fills (so nothing is
/// compiled twice): each object's resources, as the compiler reports them.
#[test]
fn no_bundled_kernel_spills_on_any_arch() {
    use attnforge::codegen::build::{find_nvcc, user_cache_dir, Build};
    if !cfg!(feature = "hip") {
        println!("skipped: attnforge was built without its `hip` feature");
        return;
    }
    assert!(
        find_nvcc().is_some(),
        "no nvcc: run scripts/setup.sh (it installs NVIDIA's compiler from PyPI)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut build = Build::new();
    build
        .file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/kernels-generated/src/specs.rs"
        ))
        .out_dir(dir.path())
        .archs(&Arch::ALL)
        .hip(true)
        .cuda(true);
    if let Some(cache) = user_cache_dir() {
        build.shared_cache(cache.join("objects"));
    }
    let report = build.compile().unwrap_or_else(|e| panic!("{e}"));
    let mut spills = Vec::new();
    let mut seen = [0usize; 2];
    for o in &report.objects {
        let bytes = std::fs::read(&o.path).unwrap();
        let at = format!("{} at {}", o.symbol, o.arch);
        if Arch::NVIDIA.contains(&o.arch) {
            let log = std::fs::read_to_string(o.log.as_ref().expect("nvcc's log")).unwrap();
            let r = parse_ptxas_log(&log)
                .into_iter()
                .find(|r| r.name == o.symbol)
                .unwrap_or_else(|| panic!("{at}: ptxas reported nothing:\n{log}"));
            assert!(r.registers > 0, "{at}: {r:?}");
            if r.spill_stores > 0 || r.spill_loads > 0 {
                spills.push(format!("{at}: {r:?}"));
            }
            seen[1] += 1;
        } else {
            let elf = parse_elf(&bytes).unwrap();
            let r = elf.kernel_resources(&o.symbol).unwrap();
            if r.vgpr_spills > 0 || r.sgpr_spills > 0 {
                spills.push(format!("{at}: {r:?}"));
            }
            seen[0] += 1;
        }
    }
    assert!(
        spills.is_empty(),
        "spilling kernels:\n{}",
        spills.join("\n")
    );
    // Each distinct kernel once per arch.
    assert_eq!(seen, [33 * 3, 33 * 2], "{:?}", report.objects.len());
}

#[test]
fn items_without_a_build_helper_say_so() {
    use attnforge::prelude::*;

    #[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16)]
    struct LocalKv;

    // This test crate has no build script: no code objects, and a reason.
    for arch in [Arch::Gfx90a, Arch::Sm90] {
        let err = LocalKv::CODE_OBJECTS
            .find(KernelKind::Append, arch)
            .unwrap_err();
        assert!(err.contains("build.rs"), "{err}");
    }
}

#[path = "support/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// A clang offload bundle, written from its format: the magic, the entry
/// count, then per entry its offset, size, id length and id (u64 little
/// endian), then the entries' bytes.
fn bundle(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let magic = b"__CLANG_OFFLOAD_BUNDLE__";
    let header: usize =
        magic.len() + 8 + entries.iter().map(|(id, _)| 24 + id.len()).sum::<usize>();
    let mut out = magic.to_vec();
    out.extend((entries.len() as u64).to_le_bytes());
    let mut at = header;
    for (id, bytes) in entries {
        for x in [at as u64, bytes.len() as u64, id.len() as u64] {
            out.extend(x.to_le_bytes());
        }
        out.extend(id.as_bytes());
        at += bytes.len();
    }
    for (_, bytes) in entries {
        out.extend(*bytes);
    }
    out
}

/// Damaged bytes: a few flipped, overwritten with extreme integers, or cut.
fn damage(r: &mut Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..1 + r.below(4) {
        if b.is_empty() {
            break;
        }
        let i = r.below(b.len());
        match r.below(4) {
            0 => b[i] ^= 1 << r.below(8),
            1 => {
                let x = [u64::MAX, 0, 1 << 32, i64::MAX as u64, b.len() as u64][r.below(5)];
                for (j, byte) in x.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + j) {
                        *slot = byte;
                    }
                }
            }
            2 => b.truncate(i),
            _ => b[i] = r.next() as u8,
        }
    }
    b
}

/// The code-object reader on damaged objects and bundles: always a result
/// or an error, never a panic, and what it returns lies inside its input.
#[test]
fn damaged_code_objects_and_bundles_are_errors_not_panics() {
    use attnforge::codegen::codeobj::{amdgpu_elf_objects, parse_offload_bundle};
    let objects: Vec<&[u8]> = attnforge::kernels::CODE_OBJECTS
        .iter()
        .filter(|o| Arch::AMD.contains(&o.arch))
        .map(|o| o.bytes)
        .take(4)
        .collect();
    // Cubins too, where the build made them: the same reader under the
    // cubin's identification.
    let cubins: Vec<&[u8]> = attnforge::kernels::CODE_OBJECTS
        .iter()
        .filter(|o| Arch::NVIDIA.contains(&o.arch))
        .map(|o| o.bytes)
        .take(2)
        .collect();
    if objects.is_empty() {
        println!(
            "skipped: attnforge was built without its `hip` feature, so no code objects exist"
        );
        return;
    }
    let good = bundle(&[
        ("host-x86_64-unknown-linux-gnu", b""),
        ("hipv4-amdgcn-amd-amdhsa--gfx90a", objects[0]),
        (
            "hipv4-amdgcn-amd-amdhsa--gfx1030",
            objects[objects.len() - 1],
        ),
    ]);
    // The undamaged bundle reads back as written.
    let entries = parse_offload_bundle(&good).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1].bytes, objects[0]);
    assert_eq!(amdgpu_elf_objects(&good).unwrap().len(), 2);
    let mut r = Rng(0xc0de);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..10_000 {
        let input = match case % 3 {
            0 => damage(&mut r, objects[case / 3 % objects.len()]),
            1 if !cubins.is_empty() => damage(&mut r, cubins[case / 3 % cubins.len()]),
            _ => damage(&mut r, &good),
        };
        let run = std::panic::catch_unwind(|| {
            let _ = parse_cubin(&input).map(|c| c.sm);
            let elf = parse_elf(&input).map(|e| e.symbols.len() + e.resources().len());
            let all = amdgpu_elf_objects(&input).map(|v| v.len());
            if let Ok(entries) = parse_offload_bundle(&input) {
                for e in entries {
                    let inside = input.as_ptr_range();
                    let r = e.bytes.as_ptr_range();
                    assert!(e.bytes.is_empty() || inside.start <= r.start && r.end <= inside.end);
                }
            }
            (elf.is_ok(), all.is_ok())
        });
        match run {
            Ok((a, b)) => {
                ok += usize::from(a) + usize::from(b);
                refused += usize::from(!a) + usize::from(!b);
            }
            Err(_) => panic!("case {case}: the reader panicked"),
        }
    }
    assert!(ok > 100 && refused > 1000, "{ok} read, {refused} refused");
}

/// Disassembles a code object: llvm-objdump for AMDGPU ELFs, nvdisasm
/// (installed beside nvcc by scripts/fetch-cuda.sh) for cubins.
fn disassemble(bytes: &[u8], arch: Arch, dir: &std::path::Path) -> String {
    let file = dir.join(format!("object.{arch}"));
    std::fs::write(&file, bytes).unwrap();
    let mut cmd = match arch.vendor() {
        Some(attnforge::codegen::Vendor::Nvidia) => std::process::Command::new(
            attnforge::codegen::build::find_nvdisasm()
                .expect("no nvdisasm: run scripts/setup.sh (it installs it beside nvcc)"),
        ),
        _ => {
            let mut c = std::process::Command::new("llvm-objdump-15");
            c.arg("-d");
            c
        }
    };
    let out = cmd
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The matrix-core kernels' code objects hold the matrix instructions, and
/// the SIMT decode and prefill kernels hold none: every bundled decode,
/// split-K decode and prefill disassembled at gfx90a and gfx940 (`v_mfma`,
/// llvm-objdump); at sm_90 every matrix-core one and one SIMT kernel of
/// each kind, at sm_80 Llama 3's decode and prefill (`HMMA`, nvdisasm's
/// SASS, about half a second a cubin; sm_80's kernels are sm_90's text,
/// tests/snapshots.rs).
#[test]
fn matrix_core_kernels_hold_the_matrix_instructions() {
    if !cfg!(feature = "hip") || !cfg!(feature = "cuda") {
        println!("skipped: attnforge was built without its `hip` and `cuda` features");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    for b in attnforge::kernels::ALL {
        for spec in b.kernels() {
            if matches!(spec, KernelSpec::Append(_) | KernelSpec::DecodeMerge(_)) {
                continue;
            }
            let simt_sample = matches!(
                (b.name, spec.kind()),
                (
                    "gemma2_9b_global",
                    KernelKind::Decode | KernelKind::DecodeSplit
                ) | ("smollm2_135m", KernelKind::Prefill)
            );
            for arch in [Arch::Gfx90a, Arch::Gfx940, Arch::Sm80, Arch::Sm90] {
                let uses = generate(&spec, arch.target()).unwrap().uses_matrix_unit();
                let wanted = match arch {
                    Arch::Sm90 => uses || simt_sample,
                    Arch::Sm80 => b.name == "llama3_8b" && spec.kind() != KernelKind::DecodeSplit,
                    _ => true,
                };
                if wanted {
                    let object = b.objects.find(spec.kind(), arch).unwrap();
                    jobs.push((b.name, spec.kind(), arch, uses, object.bytes));
                }
            }
        }
    }
    let (matrix, simt) = (
        jobs.iter().filter(|j| j.3).count(),
        jobs.iter().filter(|j| !j.3).count(),
    );
    // Decode and split-K decode of Llama 3, Mistral and Qwen 2.5 and the
    // prefill of all but SmolLM2 (12 kernels) at gfx90a, gfx940 and sm_90,
    // and two at sm_80; the other 9 at the AMD archs and 3 at sm_90.
    assert_eq!((matrix, simt), (12 * 3 + 2, 9 * 2 + 3));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(name, kind, arch, uses, bytes)) = jobs.get(i) else {
                    break;
                };
                let sub = dir.path().join(i.to_string());
                std::fs::create_dir(&sub).unwrap();
                let text = disassemble(bytes, arch, &sub);
                let needle = if arch.vendor() == Some(attnforge::codegen::Vendor::Nvidia) {
                    "HMMA."
                } else {
                    "v_mfma_f32_16x16x16"
                };
                let found = text.matches(needle).count();
                assert_eq!(
                    found > 0,
                    uses,
                    "{name} {kind:?} at {arch}: {found} `{needle}`"
                );
            });
        }
    });
}
