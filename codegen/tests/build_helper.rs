//! The build helper, run as a build script would, on scratch crates.

use std::path::{Path, PathBuf};

use attnforge_codegen::build::{Build, BuildError};
use attnforge_codegen::registry::{CUDA_DISABLED, HIP_DISABLED};
use attnforge_codegen::Arch;

const SPECS: &str = r#"
use attnforge_macros::{attention, kv_layout};

#[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16)]
pub struct SmallKv;

mod inner {
    #[attnforge_macros::attention(kv = SmallKv, q_heads = 4)]
    pub struct Small;
}
"#;

fn scratch(source: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("specs.rs");
    std::fs::write(&file, source).expect("write specs");
    (dir, file)
}

fn have_hipcc() -> bool {
    let found = std::process::Command::new("hipcc")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        println!("skipped: hipcc is not installed (the README's test command installs it)");
    }
    found
}

#[test]
fn every_spec_error_is_reported_with_file_line_and_column() {
    let (dir, file) = scratch(
        "use attnforge_macros::*;\n\
         #[kv_layout(page_size = 0, kv_heads = 8, head_dim = 100, dtype = f16)]\n\
         pub struct Kv;\n\
         #[attention(kv = Missing, q_heads = 8)]\n\
         pub struct A;\n\
         #[kv_layout(page_size = 16, kv_heads = 8, head_dim = 128, dtype = f16)]\n\
         pub struct Kv2;\n\
         #[attention(kv = Kv2, q_heads = 12)]\n\
         pub struct B;\n",
    );
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .hip(false)
        .compile()
        .unwrap_err();
    let BuildError::Source(errors) = &err else {
        panic!("expected source errors, got {err}");
    };
    let lines: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert_eq!((lines[0].0, lines[0].1), (2, 25));
    assert!(lines[0]
        .2
        .starts_with("page_size must be between 1 and 512"));
    assert_eq!(lines[1].0, 2);
    assert!(lines[1].2.starts_with("head_dim must be a multiple of 8"));
    // The layout rule is the same text the macro reports (one list of rules).
    let rule = attnforge_codegen::spec::rules::q_heads_per_kv_head(12, 8).unwrap_err();
    assert!(
        lines
            .iter()
            .any(|l| l.0 == 8 && l.1 == 33 && l.2 == rule.message),
        "{err}"
    );
    assert!(lines
        .iter()
        .any(|l| l.0 == 4 && l.2.contains("`kv = Missing` does not name")));
    // The printed form names the file.
    assert!(err
        .to_string()
        .contains(&format!("{}:2:25:", file.display())));
}

/// A float rule judges the value the spec stores (f32): a positive literal
/// that rounds to 0 is refused at its tokens, not later by `validate`.
#[test]
fn a_float_that_rounds_to_zero_is_refused_at_its_tokens() {
    let (dir, file) = scratch(
        "use attnforge_macros::*;\n\
         #[kv_layout(page_size = 16, kv_heads = 2, head_dim = 64, dtype = f16)]\n\
         pub struct Kv;\n\
         #[attention(kv = Kv, q_heads = 4, scale = 1e-50)]\n\
         pub struct A;\n\
         #[attention(kv = Kv, q_heads = 4, logits_soft_cap = 1e-46)]\n\
         pub struct B;\n\
         #[attention(kv = Kv, q_heads = 4, scale = 1e-40, logits_soft_cap = 3.4e38)]\n\
         pub struct C;\n",
    );
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .hip(false)
        .compile()
        .unwrap_err();
    let BuildError::Source(errors) = &err else {
        panic!("expected source errors, got {err}");
    };
    let found: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    // Only A and B: C's tiny scale is a positive (subnormal) f32.
    assert_eq!(found.len(), 2, "{err}");
    assert_eq!((found[0].0, found[0].1), (4, 43), "{err}");
    assert!(found[0].2.starts_with("scale must be a positive"), "{err}");
    assert_eq!((found[1].0, found[1].1), (6, 53), "{err}");
    assert!(found[1].2.starts_with("logits_soft_cap must be"), "{err}");
}

#[test]
fn with_hip_off_the_registry_says_why() {
    let (dir, file) = scratch(SPECS);
    let report = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .hip(false)
        .compile()
        .unwrap();
    assert_eq!(report.items.len(), 2);
    assert!(report.objects.is_empty());
    let reg = std::fs::read_to_string(dir.path().join("attnforge/registry/Small.rs")).unwrap();
    assert!(
        reg.contains(&format!("hip: Some({HIP_DISABLED:?})")),
        "{reg}"
    );
    // CUDA is off by default.
    assert!(
        reg.contains(&format!("cuda: Some({CUDA_DISABLED:?})")),
        "{reg}"
    );
}

/// NVIDIA's compiler, as the build helper finds it (the test command's
/// set-up installs it from PyPI when no system CUDA exists). Missing, the
/// test fails: it does not skip.
fn nvcc() -> PathBuf {
    attnforge_codegen::build::find_nvcc()
        .expect("no nvcc: run scripts/setup.sh (it installs NVIDIA's compiler from PyPI)")
}

#[test]
fn a_missing_nvcc_names_what_to_do() {
    let (dir, file) = scratch(SPECS);
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .archs(&[Arch::Sm90])
        .cuda(true)
        .nvcc("/nonexistent/nvcc")
        .compile()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::NoNvcc { .. }), "{text}");
    assert!(text.contains("scripts/setup.sh"), "{text}");
    assert!(text.contains("`cuda` feature"), "{text}");
    // With CUDA off, NVIDIA archs compile nothing and ask for no nvcc.
    let report = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .archs(&[Arch::Sm90])
        .nvcc("/nonexistent/nvcc")
        .compile()
        .unwrap();
    assert!(report.objects.is_empty());
}

#[cfg(unix)]
#[test]
fn an_nvcc_failure_shows_its_command_and_whole_log() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, file) = scratch(SPECS);
    let nvcc = dir.path().join("fake-nvcc");
    std::fs::write(
        &nvcc,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo fake nvcc 13.0; exit 0; }\n\
         echo 'kernel.cu(3): error: identifier \"x\" is undefined' >&2\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&nvcc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .archs(&[Arch::Sm80])
        .hip(false)
        .cuda(true)
        .nvcc(&nvcc)
        .compile()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Compiler {
                compiler: "nvcc",
                arch: Arch::Sm80,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("is undefined"), "{text}");
    assert!(
        text.contains("-arch=sm_80") && text.contains("-cubin"),
        "{text}"
    );
    assert!(text.contains(&nvcc.display().to_string()), "{text}");
}

#[test]
fn cubins_are_cached_with_their_ptxas_log_and_a_damaged_entry_is_rebuilt() {
    let nvcc = nvcc();
    let src = "use attnforge_macros::*;\n\
        #[kv_layout(page_size = 8, kv_heads = 1, head_dim = 32, dtype = f16)]\n\
        pub struct TinyKv;\n";
    let cache = tempfile::tempdir().expect("temp dir");
    let build = || {
        let (dir, file) = scratch(src);
        let report = Build::new()
            .file(&file)
            .out_dir(dir.path())
            .shared_cache(cache.path())
            .archs(&[Arch::Sm90])
            .cuda(true)
            .nvcc(&nvcc)
            .compile()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_cubins_hold_their_kernels(&report);
        (dir, report)
    };
    let (_a, first) = build();
    assert_eq!((first.compiled(), first.cached()), (1, 0));
    let (_b, second) = build();
    assert_eq!((second.compiled(), second.cached()), (0, 1));
    let entry = |ext: &str| {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap_or_else(|| panic!("a cached .{ext}"))
    };
    // A cubin without its log is not whole: rebuilt, and the cache repaired.
    std::fs::remove_file(entry("log")).unwrap();
    let (_c, third) = build();
    assert_eq!((third.compiled(), third.cached()), (1, 0));
    // A log in which ptxas did not report this kernel is not its log.
    std::fs::write(entry("log"), "ptxas info    : 0 bytes gmem\n").unwrap();
    let (_e, fifth) = build();
    assert_eq!((fifth.compiled(), fifth.cached()), (1, 0));
    // A damaged cubin is rebuilt too.
    std::fs::write(entry("cubin"), b"\x7fELF, but not a cubin").unwrap();
    let (_d, fourth) = build();
    assert_eq!((fourth.compiled(), fourth.cached()), (1, 0));
    assert!(std::fs::read(entry("cubin"))
        .unwrap()
        .starts_with(b"\x7fELF"));
    let reg = std::fs::read_to_string(_d.path().join("attnforge/registry/TinyKv.rs")).unwrap();
    assert!(
        reg.contains("cuda: None") && reg.contains("Arch::Sm90"),
        "{reg}"
    );
}

#[test]
fn a_missing_hipcc_names_what_to_install() {
    let (dir, file) = scratch(SPECS);
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .hipcc("/nonexistent/hipcc")
        .compile()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BuildError::NoHipcc { .. }), "{text}");
    assert!(text.contains("apt-get install hipcc"), "{text}");
    assert!(text.contains("`hip` feature"), "{text}");
}

#[cfg(unix)]
fn fake_hipcc(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-hipcc");
    std::fs::write(
        &path,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\n\
         mkdir \"$TMPDIR/kernel-0c5e9b\" && echo \"tmp=$TMPDIR\" >&2\n\
         echo 'kernel.hip:3:1: error: something broke' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn a_hipcc_failure_shows_its_command_and_whole_log() {
    let (dir, file) = scratch(SPECS);
    let hipcc = fake_hipcc(dir.path());
    let err = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .archs(&[Arch::Gfx1030])
        .hipcc(&hipcc)
        .compile()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Compiler {
                compiler: "hipcc",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("something broke"), "{text}");
    assert!(text.contains("--offload-arch=gfx1030"), "{text}");
    assert!(text.contains(&hipcc.display().to_string()), "{text}");
    // hipcc's scratch directory (clang leaves intermediates in $TMPDIR) is
    // private to the build and removed, never left in the user's /tmp.
    let tmp = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tmp="))
        .unwrap_or_else(|| panic!("no TMPDIR in the log: {text}"));
    assert!(Path::new(tmp).starts_with(dir.path()), "{tmp}");
    assert!(!Path::new(tmp).exists(), "{tmp} was left behind");
    // Nothing half-written is left under a cached name.
    let objects = std::fs::read_dir(dir.path().join("attnforge/objects")).unwrap();
    assert!(objects
        .filter_map(Result::ok)
        .all(|e| !e.path().to_string_lossy().ends_with(".co")));
}

#[test]
fn an_unchanged_rebuild_compiles_nothing() {
    if !have_hipcc() {
        return;
    }
    let (dir, file) = scratch(SPECS);
    let build = || {
        Build::new()
            .file(&file)
            .out_dir(dir.path())
            .archs(&[Arch::Gfx90a, Arch::Gfx1030])
            .compile()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let first = build();
    // One layout (append) and one attention (decode, prefill, split-K
    // decode, merge), two archs each.
    assert_eq!((first.compiled(), first.cached()), (10, 0));
    let second = build();
    assert_eq!((second.compiled(), second.cached()), (0, 10));
    // A changed spec recompiles only its own kernels.
    std::fs::write(&file, SPECS.replace("q_heads = 4", "q_heads = 8")).unwrap();
    let third = build();
    assert_eq!((third.compiled(), third.cached()), (8, 2));
    let reg = std::fs::read_to_string(dir.path().join("attnforge/registry/Small.rs")).unwrap();
    assert!(reg.contains("af_decode_f16_nhd_p16_h2x4_d64"), "{reg}");
    assert!(reg.contains("KernelKind::Prefill"), "{reg}");
    assert!(reg.contains("Arch::Gfx1030"), "{reg}");
}

#[test]
fn a_shared_cache_serves_other_builds_and_never_trusts_a_damaged_entry() {
    if !have_hipcc() {
        return;
    }
    let src = "use attnforge_macros::*;\n\
        #[kv_layout(page_size = 8, kv_heads = 1, head_dim = 32, dtype = f32)]\n\
        pub struct TinyKv;\n";
    let cache = tempfile::tempdir().expect("temp dir");
    let build = || {
        let (dir, file) = scratch(src);
        let report = Build::new()
            .file(&file)
            .out_dir(dir.path())
            .shared_cache(cache.path())
            .archs(&[Arch::Gfx90a])
            .compile()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_objects_hold_their_kernels(&report);
        (dir, report)
    };
    let (_a, first) = build();
    assert_eq!((first.compiled(), first.cached()), (1, 0));
    // Another build (another out dir, as another profile or checkout has)
    // copies the object instead of compiling it.
    let (_b, second) = build();
    assert_eq!((second.compiled(), second.cached()), (0, 1));
    // A damaged entry is rebuilt, and the rebuild repairs the cache.
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "co"))
        .expect("a cached object");
    std::fs::write(&entry, b"not an object").unwrap();
    let (_c, third) = build();
    assert_eq!((third.compiled(), third.cached()), (1, 0));
    assert!(std::fs::read(&entry).unwrap().starts_with(b"\x7fELF"));
}

/// The cache the hipcc matrix tests share between runs of the test
/// command: a warm run copies objects hipcc already accepted (same source,
/// arch, flags and hipcc), a clean clone compiles them all.
fn matrix_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("hipcc-cache")
}

#[test]
fn hipcc_and_nvcc_accept_every_dtype_order_head_dim_and_variant() {
    if !have_hipcc() {
        return;
    }
    // (head_dim, kv_heads, q_heads, extra keys): padded rows (96), rows wider
    // than a wave32 warp (256 in f32), MQA, MHA, odd GQA groups, variants;
    // every kernel of each.
    let shapes = [
        (64, 2, 14, ", causal, alibi = given, sinks"),
        (96, 4, 4, ", causal, sliding_window = 100, alibi"),
        (256, 1, 8, ", logits_soft_cap = 30.0, scale = 0.1"),
    ];
    let mut src = String::from("use attnforge_macros::*;\n");
    let mut n = 0;
    let dtypes = [("f32", ""), ("f16", ""), ("bf16", "")];
    for (i, (dtype, q_dtype)) in dtypes.iter().enumerate() {
        for (j, (d, kv, q, extra)) in shapes.iter().enumerate() {
            let order = if (i + j) % 2 == 0 { "NHD" } else { "HND" };
            let page = [1, 16, 128][j];
            src += &format!(
                "#[kv_layout(page_size = {page}, kv_heads = {kv}, head_dim = {d}, dtype = {dtype}, order = {order})]\n\
                 pub struct L{i}{j};\n\
                 #[attention(kv = L{i}{j}, q_heads = {q}{extra}{q_dtype})]\n\
                 pub struct A{i}{j};\n"
            );
            // append for the layout; decode, prefill, split-K decode and
            // merge for the attention.
            n += 5;
        }
    }
    let (dir, file) = scratch(&src);
    let report = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .shared_cache(matrix_cache())
        .archs(&[Arch::Gfx90a, Arch::Gfx1030])
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.objects.len(), n * 2);
    assert_objects_hold_their_kernels(&report);
    // The same matrix through nvcc, for both NVIDIA archs.
    let report = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .shared_cache(matrix_cache())
        .archs(&Arch::NVIDIA)
        .hip(false)
        .cuda(true)
        .nvcc(nvcc())
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.objects.len(), n * 2);
    assert_cubins_hold_their_kernels(&report);
}

#[test]
fn hipcc_and_nvcc_accept_fp8_kernels_for_every_arch() {
    if !have_hipcc() {
        return;
    }
    // fp8 caches with either scale and f16/bf16 queries, with variants; a
    // head dim of 40 reads 8-element vectors instead of 16. Every kernel,
    // for every arch (gfx940 included: the header's conversions are
    // integer arithmetic, not the arch's fp8 instructions).
    let src = "use attnforge_macros::*;\n\
        #[kv_layout(page_size = 16, kv_heads = 2, head_dim = 128, dtype = fp8_e4m3, kv_scale = per_head)]\n\
        pub struct HeadKv;\n\
        #[attention(kv = HeadKv, q_heads = 8, causal, sliding_window = 64, sinks, q_dtype = f16)]\n\
        pub struct HeadAttn;\n\
        #[kv_layout(page_size = 1, kv_heads = 1, head_dim = 40, dtype = fp8_e4m3, order = HND)]\n\
        pub struct TensorKv;\n\
        #[attention(kv = TensorKv, q_heads = 7, logits_soft_cap = 30.0, alibi, q_dtype = bf16)]\n\
        pub struct TensorAttn;\n";
    let (dir, file) = scratch(src);
    let report = Build::new()
        .file(&file)
        .out_dir(dir.path())
        .shared_cache(matrix_cache())
        .archs(&Arch::ALL)
        .cuda(true)
        .nvcc(nvcc())
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.objects.len(), 2 * 5 * Arch::ALL.len());
    assert_objects_hold_their_kernels(&report);
    assert_cubins_hold_their_kernels(&report);
    assert!(report
        .objects
        .iter()
        .any(|o| o.symbol.starts_with("af_append_fp8_e4m3_sh")));
}

/// Every NVIDIA object of a build is a cubin for its arch holding its
/// kernel, and ptxas reported the kernel's resources in its log.
fn assert_cubins_hold_their_kernels(report: &attnforge_codegen::build::BuildReport) {
    use attnforge_codegen::cubin::{parse_cubin, parse_ptxas_log};
    for o in report
        .objects
        .iter()
        .filter(|o| Arch::NVIDIA.contains(&o.arch))
    {
        let cubin = parse_cubin(&std::fs::read(&o.path).unwrap()).unwrap();
        assert_eq!(cubin.arch(), o.arch.name(), "{}", o.path.display());
        assert!(
            cubin.has_function(&o.symbol),
            "{} lacks {}",
            o.path.display(),
            o.symbol
        );
        let log = std::fs::read_to_string(o.log.as_ref().unwrap()).unwrap();
        let r = parse_ptxas_log(&log);
        assert!(
            r.iter()
                .any(|r| r.name == o.symbol && r.arch == o.arch.name() && r.registers > 0),
            "{log}"
        );
    }
}

/// Every AMD object of a build is an AMDGPU ELF for its arch holding its kernel.
fn assert_objects_hold_their_kernels(report: &attnforge_codegen::build::BuildReport) {
    for o in report
        .objects
        .iter()
        .filter(|o| Arch::AMD.contains(&o.arch))
    {
        let bytes = std::fs::read(&o.path).unwrap();
        let elf = attnforge_codegen::codeobj::parse_elf(&bytes).unwrap();
        assert_eq!(elf.arch(), Some(o.arch.name()));
        assert!(
            elf.has_kernel(&o.symbol),
            "{} lacks {}",
            o.path.display(),
            o.symbol
        );
    }
}
