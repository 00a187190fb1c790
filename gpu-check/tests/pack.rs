//! The GPU check without a GPU: the build half's case generation and
//! expected outputs, then the whole run half (launches through the launch
//! path, comparisons, JSON, the speed part, the sanitizer's launches, the
//! Python report) on the CPU driver at sm_90.
#![cfg(feature = "cpu")]

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use attnforge_codegen::{DType, KvLayoutSpec, KvScale, Order};
use attnforge_gpu_check::check::{self, CaseResult, Summary};
use attnforge_gpu_check::drivers::CpuBackend;
use attnforge_gpu_check::manifest::{Kind, Manifest};
use attnforge_gpu_check::speed::{self, SpeedConfig};
use attnforge_gpu_check::{cases, inputs, pack, sanitize};
use half::f16;

/// A quick pack of its own (the JIT's disk cache makes the second build
/// of the same kernels cheap), removed when dropped.
fn quick_pack() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pack::build(dir.path(), cases::quick(), SpeedConfig::quick()).unwrap();
    dir
}

fn backend() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(CpuBackend::sm90)
}

fn results(dir: &Path) -> Vec<CaseResult> {
    std::fs::read_to_string(dir.join("correctness.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn python() -> Option<&'static str> {
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3")
}

#[test]
fn the_run_half_on_the_cpu_driver_passes_and_reports() {
    let dir = quick_pack();
    let pack = dir.path();
    let m = Manifest::load(pack).unwrap();
    assert_eq!(m.cases.len(), cases::quick().len());
    assert!(
        m.cases
            .iter()
            .all(|c| c.cpu_vs_reference.is_some_and(|e| e <= c.tolerance)),
        "{:#?}",
        m.cases
    );
    let (scratch, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = check::run(backend(), pack, scratch.path(), out.path(), None, 2).unwrap();
    assert_eq!(
        s,
        Summary {
            passed: m.cases.len(),
            failed: 0,
            errors: 0
        }
    );
    for r in results(out.path()) {
        assert!(r.passed && r.inputs_match, "{r:?}");
        let cpu = r.vs_cpu.as_ref().unwrap();
        // The same kernels on the same backend: the same bits.
        assert_eq!(cpu.bit_equal, 1.0, "{r:?}");
        assert_eq!(r.vs_reference.is_none(), r.kind == Kind::Append);
        let case = scratch.path().join("cases").join(&r.id).join("case.json");
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(case).unwrap()).unwrap();
        assert!(j["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"].as_str().unwrap().starts_with("gpu.")));
    }
    // The speed part, tiny, beside it (its prefill files for the Python part).
    let mut saves = 0;
    let report = speed::run(backend(), &m.speed, Some(scratch.path()), &mut |_| {
        saves += 1
    });
    assert_eq!(saves, m.speed.dtypes.len() + 2);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Shuffled pages for every dtype, contiguous too for f16; shapes over
    // the K/V limit skipped; the SIMT decode again (shuffled) where the
    // device's decode is the matrix-core one.
    let mut figures = 0;
    let mut simt = 0;
    for d in &m.speed.dtypes {
        let dt = DType::from_name(d).unwrap();
        let token = 2 * u64::from(m.speed.kv_heads * m.speed.head_dim * dt.size_bytes());
        let (b, c) = (&m.speed.batches, &m.speed.contexts);
        let fit = b
            .iter()
            .flat_map(|&b| c.iter().map(move |&c| u64::from(b) * u64::from(c)));
        let fit = fit.filter(|n| n * token <= m.speed.max_kv_bytes).count();
        figures += fit * if *d == m.speed.paging_dtype { 2 } else { 1 };
        let sm90 = attnforge_codegen::target::Arch::Sm90.target();
        if attnforge_codegen::kernels::decode_instr(&m.speed.spec(dt), sm90).is_some() {
            simt += fit;
        }
    }
    let kinds = |k: &str| report.decode.iter().filter(|f| f.kernel == k).count();
    assert_eq!(
        (kinds("matrix") + kinds("simt"), kinds("simt")),
        (figures + simt, simt)
    );
    assert!(
        simt > 0,
        "the quick pack's decode has a matrix-core kernel at sm_90"
    );
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(report
        .decode
        .iter()
        .all(|f| f.gb_per_s > 0.0 && f.fraction_of_copy.is_some()));
    assert_eq!(report.prefill.len(), m.speed.prefill_tokens.len() + 1);
    assert!(
        report.paging.iter().any(|p| p.same_bits == Some(true)),
        "{:?}",
        report.paging
    );
    attnforge_gpu_check::error::write_json(&out.path().join("speed.json"), &report).unwrap();
    let Some(py) = python() else {
        eprintln!("no python3: the report is not checked");
        return;
    };
    let dir = env!("CARGO_MANIFEST_DIR");
    let st = Command::new(py)
        .args([&format!("{dir}/python/reference.py")])
        .args([pack, scratch.path(), out.path()])
        .status()
        .unwrap();
    assert!(st.success(), "reference.py exits 0 with or without torch");
    let torch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("torch.json")).unwrap()).unwrap();
    if torch["torch"].is_null() {
        assert!(torch["torch_missing"].is_string());
    } else {
        // torch is there (on the CPU): its reference agrees with ours.
        let cases = torch["cases"].as_object().unwrap();
        assert_eq!(cases.len(), m.cases.len());
        assert!(cases.values().all(|c| c["passed"] == true), "{cases:?}");
    }
    std::fs::write(
        out.path().join("steps.tsv"),
        "correctness\tok\t0\t1.0\t150\n",
    )
    .unwrap();
    let st = Command::new(py)
        .args([&format!("{dir}/python/report.py")])
        .args([pack, out.path(), scratch.path()])
        .status()
        .unwrap();
    assert!(st.success());
    let res: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(res["correctness"]["summary"]["passed"], m.cases.len());
    assert_eq!(
        res["speed"]["runner"]["decode"].as_array().unwrap().len(),
        figures + simt
    );
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    for part in [
        "## Correctness",
        "## Speed",
        "fraction of copy",
        "## compute-sanitizer",
        "b.smollm2_135m.decode",
    ] {
        assert!(md.contains(part), "results.md lacks {part}:\n{md}");
    }
}

#[test]
fn a_corrupted_expected_output_is_reported_as_a_failure() {
    // A copy of the pack whose decode expectation is off by one ulp in a
    // hundred elements, and whose prefill expectation is cut short.
    let src = quick_pack();
    let src = src.path();
    let pack = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    };
    copy(src, pack.path());
    copy(&src.join("expected"), &pack.path().join("expected"));
    let m = Manifest::load(pack.path()).unwrap();
    let decode = m
        .cases
        .iter()
        .find(|c| c.kind == Kind::Decode && c.group == "variant")
        .unwrap();
    let prefill = m.cases.iter().find(|c| c.kind == Kind::Prefill).unwrap();
    let file = |c: &attnforge_gpu_check::manifest::Case| {
        pack.path().join(
            &c.expected
                .iter()
                .find(|f| f.name == "cpu.out")
                .unwrap()
                .file,
        )
    };
    let mut bytes = std::fs::read(file(decode)).unwrap();
    for b in bytes.iter_mut().step_by(2) {
        *b = b.wrapping_add(64);
    }
    std::fs::write(file(decode), bytes).unwrap();
    std::fs::write(file(prefill), b"short").unwrap();
    let (scratch, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let only = format!("{},{}", decode.id, prefill.id);
    let s = check::run(
        backend(),
        pack.path(),
        scratch.path(),
        out.path(),
        Some(&only),
        1,
    )
    .unwrap();
    assert_eq!(
        s,
        Summary {
            passed: 0,
            failed: 1,
            errors: 1
        }
    );
    let rs = results(out.path());
    let d = rs.iter().find(|r| r.id == decode.id).unwrap();
    assert!(!d.passed && !d.vs_cpu.as_ref().unwrap().passed, "{d:?}");
    // The reference still agrees: only the CPU expectation was damaged.
    assert!(d.vs_reference.as_ref().unwrap().passed);
    let p = rs.iter().find(|r| r.id == prefill.id).unwrap();
    let msg = p.message.as_deref().unwrap();
    assert_eq!(p.status, "error");
    assert!(
        msg.contains(&file(prefill).display().to_string()) && msg.contains("5 bytes"),
        "{msg}"
    );
}

#[test]
fn bad_pack_files_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    std::fs::write(&path, "{ not json").unwrap();
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("not a valid pack manifest") && err.contains("manifest.json"),
        "{err}"
    );
    let mut m = Manifest {
        schema: "something else".into(),
        expected_by: "nothing".into(),
        cases: cases::quick(),
        speed: SpeedConfig::quick(),
    };
    attnforge_gpu_check::error::write_json(&path, &m).unwrap();
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema `something else`"), "{err}");
    m.schema = attnforge_gpu_check::manifest::PACK_SCHEMA.into();
    m.cases[0].id = "../escape".into();
    attnforge_gpu_check::error::write_json(&path, &m).unwrap();
    assert!(Manifest::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("not file-name safe"));
}

#[test]
fn the_inputs_are_the_numeric_harness_inputs() {
    for (dtype, scale, order) in [
        (DType::F16, KvScale::Unscaled, Order::Nhd),
        (DType::F8E4M3, KvScale::PerHead, Order::Hnd),
    ] {
        let l = KvLayoutSpec {
            page_size: 4,
            kv_heads: 2,
            head_dim: 16,
            dtype,
            order,
            scale,
        };
        let lens = [1, 9, 30];
        let (mut a, mut b) = (inputs::Rng(7), attnforge_runtime::check::Rng(7));
        let (k, v, t) = inputs::paged_inputs::<f16>(&l, &lens, &mut a);
        let h = attnforge_runtime::check::paged_inputs::<f16>(&l, &lens, &mut b);
        let bits = |x: &[f16]| x.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&k), bits(&v), &t), (bits(&h.k), bits(&h.v), &h.table));
        assert_eq!(
            inputs::kv_scales(&l, &mut a),
            attnforge_runtime::check::kv_scales(&l, &mut b)
        );
    }
    let lens = [1, 64, 65, 4100];
    assert_eq!(
        inputs::q_lens(&lens),
        attnforge_runtime::check::q_lens(&lens)
    );
}

#[test]
fn the_sanitizer_mode_launches_each_kind_once() {
    let done = sanitize::run(backend()).unwrap();
    let kernels: Vec<&str> = done
        .iter()
        .flat_map(|(c, _)| c.kernels.iter().map(String::as_str))
        .collect();
    for (c, r) in &done {
        assert!(r.is_ok(), "{}: {r:?}", c.id);
    }
    for kind in [
        "af_decode_f16",
        "af_decode_split_f16",
        "af_decode_merge_f16",
        "af_prefill_f16",
        "af_append_f16",
    ] {
        assert_eq!(
            kernels
                .iter()
                .filter(|k| k.starts_with(&format!("{kind}_")))
                .count(),
            1,
            "{kind}: {kernels:?}"
        );
    }
}

#[test]
fn the_command_line_says_what_is_wrong() {
    let bin = env!("CARGO_BIN_EXE_attnforge-gpu-check");
    let out = Command::new(bin)
        .args(["check", "only-one"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PACK_DIR SCRATCH_DIR RESULTS_DIR"));
    let out = Command::new(bin)
        .args(["sanitize", "--driver", "rocm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("driver `rocm` is not in this build"));
    let out = Command::new(bin)
        .args(["cases", "--quick"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        cases::quick().len()
    );
}

#[test]
fn isolated_groups_are_merged_and_a_killed_one_is_recorded() {
    let bin = env!("CARGO_BIN_EXE_attnforge-gpu-check");
    let dir = quick_pack();
    let pack = dir.path();
    let n = Manifest::load(pack).unwrap().cases.len();
    for (limit, code) in [("60", 0), ("0", 1)] {
        let (scratch, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let st = Command::new(bin)
            .arg("check")
            .args([pack, scratch.path(), out.path()])
            .args([
                "--driver",
                "cpu",
                "--isolate",
                "--jobs",
                "2",
                "--group-seconds",
                limit,
            ])
            .output()
            .unwrap();
        assert_eq!(
            st.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let rs = results(out.path());
        assert_eq!(rs.len(), n);
        if code == 0 {
            assert!(rs.iter().all(|r| r.passed));
        } else {
            assert!(
                rs.iter()
                    .all(|r| r.status == "error"
                        && r.message.as_deref().unwrap().contains("was killed")),
                "{rs:?}"
            );
        }
    }
}

#[test]
fn the_python_parts_compile() {
    let Some(py) = python() else {
        return;
    };
    let (dir, tmp) = (env!("CARGO_MANIFEST_DIR"), tempfile::tempdir().unwrap());
    for f in ["reference.py", "report.py"] {
        // Compiled into a temporary file: no __pycache__ in the source tree.
        let code = "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)";
        let st = Command::new(py)
            .args(["-c", code, &format!("{dir}/python/{f}")])
            .arg(tmp.path().join(format!("{f}c")))
            .status()
            .unwrap();
        assert!(st.success(), "{f}");
    }
}
