//! The `attnforge` command, run as a user runs it: good specs give their
//! output (tables, and JSON that parses), bad ones one line per problem
//! naming what to fix, and a non-zero exit.

use std::process::{Command, Output};

use attnforge::codegen::frontend::parse;
use attnforge::codegen::kernels::{symbol, KernelSpec};
use attnforge::{AttentionSpec, DType, KvLayoutSpec, KvScale, Order};

const LAYOUT: &str = "page_size=16, kv_heads=2, head_dim=64, dtype=f16";
const ATTENTION: &str = "q_heads=8, causal, sliding_window=100";

fn attnforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnforge"))
        .args(args)
        .output()
        .expect("the attnforge binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// The spec the two arguments mean, written out by hand.
fn spec() -> AttentionSpec {
    let kv = KvLayoutSpec {
        page_size: 16,
        kv_heads: 2,
        head_dim: 64,
        dtype: DType::F16,
        order: Order::Nhd,
        scale: KvScale::Unscaled,
    };
    AttentionSpec {
        causal: true,
        sliding_window: Some(100),
        ..AttentionSpec::new(kv, 8)
    }
}

#[test]
fn emit_prints_the_kernel_of_the_spec() {
    let o = attnforge(&[
        "emit",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--arch",
        "gfx1030",
        "--kernel",
        "decode",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let want = symbol(&KernelSpec::Decode(spec()));
    assert!(text.contains(&format!(" {want}(")), "{want}: {text}");
    assert!(text.contains("extern \"C\" __global__"), "{text}");
    assert!(text.contains("#define AF_WARP_SIZE 32"), "{text}");

    let all = json(&attnforge(&[
        "emit",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--arch",
        "gfx90a",
        "--json",
    ]));
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "append",
            "decode",
            "prefill",
            "decode_split",
            "decode_merge"
        ]
    );
}

/// Bad specs: every problem on its own `error:` line, with the front-end's
/// own message and the column of the offending text; exit status 2.
#[test]
fn bad_specs_are_one_line_per_problem_pointing_into_the_argument() {
    let bad = "page_size=16, kv_heads=2, head_dim=100, dtype=f17";
    let o = attnforge(&["emit", "--layout", bad, "--arch", "gfx90a"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines: Vec<String> = stderr(&o).lines().map(String::from).collect();
    // The same messages as the attribute's, from the same parser.
    let item: syn::ItemStruct = syn::parse_quote!(
        struct Layout;
    );
    let want: Vec<String> = parse::kv_layout(bad.parse().unwrap(), &item)
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(want.len(), 2);
    assert_eq!(
        lines[0],
        format!("error: --layout at column 36 (`100`): {}", want[0])
    );
    assert_eq!(
        lines[1],
        format!("error: --layout at column 47 (`f17`): {}", want[1])
    );

    // A rule across the two: 7 query heads over 2 KV heads.
    let o = attnforge(&[
        "check",
        "--layout",
        LAYOUT,
        "--attention",
        "causal, q_heads=7",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.starts_with("error: --attention at column 17 (`7`): "),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    for (args, says) in [
        (
            vec!["emit", "--layout", LAYOUT, "--arch", "gfx9000"],
            "--arch `gfx9000`: unknown arch",
        ),
        (
            vec!["emit", "--layout", LAYOUT, "--arch", "host"],
            "--arch host: the host target has no GPU code",
        ),
        (
            vec![
                "emit", "--layout", LAYOUT, "--arch", "gfx90a", "--kernel", "decode",
            ],
            "give --attention",
        ),
        (
            vec![
                "emit",
                "--layout",
                LAYOUT,
                "--attention",
                "kv=X, q_heads=8",
                "--arch",
                "gfx90a",
            ],
            "remove `kv`",
        ),
        (
            vec![
                "emit",
                "--layout",
                LAYOUT,
                "--attention",
                "q_heads=8, scale=\"",
                "--arch",
                "gfx90a",
            ],
            "cannot read",
        ),
        (
            vec![
                "bench",
                "--layout",
                LAYOUT,
                "--attention",
                ATTENTION,
                "--seqs",
                "0",
            ],
            "at least 1",
        ),
    ] {
        let o = attnforge(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with("error: ") && e.contains(says),
            "{args:?}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn check_runs_the_kernels_against_the_reference() {
    let v = json(&attnforge(&[
        "check",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--arch",
        "host",
        "--mode",
        "fast",
        "--seed",
        "11",
        "--json",
    ]));
    let launches = v["launches"].as_array().unwrap();
    // Append once; decode, prefill and split-K decode on every batch.
    let cases = attnforge::runtime::check::CASES.len();
    assert_eq!(launches.len(), 1 + 3 * cases, "{v}");
    assert_eq!(v["failed"], 0);
    for l in launches {
        let (e, t) = (
            l["error"].as_f64().unwrap(),
            l["tolerance"].as_f64().unwrap(),
        );
        assert!(e <= t && l["passed"] == true, "{l}");
    }
}

#[test]
fn bench_measures_decode_prefill_and_jit() {
    let v = json(&attnforge(&[
        "bench",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--seqs",
        "2",
        "--len",
        "64",
        "--prompt",
        "48",
        "--runs",
        "1",
        "--jit-arch",
        "host",
        "--json",
    ]));
    let f = v["figures"].as_array().unwrap();
    assert_eq!(f[0]["figure"], "decode");
    // 2 × 64 tokens × 2 heads × 64 × 2 bytes, K and V.
    assert_eq!(f[0]["kv_bytes"], 2 * 2 * 64 * 2 * 64 * 2);
    assert!(f[0]["gb_per_s"].as_f64().unwrap() > 0.0);
    assert!(f[0]["memcpy_gb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(f[1]["figure"], "prefill");
    // Causal, window 100 > 48: 48·49/2 pairs, 8 heads, 4·64 flops each.
    assert_eq!(f[1]["flops"], 48 * 49 / 2 * 8 * 4 * 64);
    // 5 kernels, fast and checked.
    assert_eq!(v["jit"].as_array().unwrap().len(), 10);
}

#[test]
fn kernels_lists_the_bundled_specs() {
    let v = json(&attnforge(&["kernels", "--json"]));
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), attnforge::kernels::ALL.len());
    for (item, b) in items.iter().zip(attnforge::kernels::ALL) {
        assert_eq!(item["item"], b.name);
        let symbols: Vec<String> = b.kernels().iter().map(symbol).collect();
        let got: Vec<&str> = item["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["symbol"].as_str().unwrap())
            .collect();
        assert_eq!(got, symbols);
    }
    let table = stdout(&attnforge(&["kernels"]));
    assert!(table.contains("af_decode_f16_nhd_p16_h8x4_d128"), "{table}");
}

#[test]
fn build_compiles_with_hipcc_and_reads_each_objects_resources() {
    let hipcc = std::env::var_os("HIPCC")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("hipcc"))
                .find(|p| p.is_file())
        });
    if hipcc.is_none() {
        println!("skipped: no hipcc (the test command installs it)");
        return;
    }
    let out = std::env::temp_dir().join(format!("attnforge-cli-build-{}", std::process::id()));
    let v = json(&attnforge(&[
        "build",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--kernel",
        "decode",
        "--arch",
        "gfx90a,gfx1030",
        "--out-dir",
        out.to_str().unwrap(),
        "--json",
    ]));
    let objects = v.as_array().unwrap();
    assert_eq!(objects.len(), 2, "{v}");
    let want = symbol(&KernelSpec::Decode(spec()));
    for (o, arch) in objects.iter().zip(["gfx90a", "gfx1030"]) {
        assert_eq!(
            (o["symbol"].as_str(), o["arch"].as_str()),
            (Some(&want[..]), Some(arch))
        );
        // The figures are the code object's own, as the library reads them.
        let bytes = std::fs::read(o["path"].as_str().unwrap()).unwrap();
        let elf = attnforge::codegen::codeobj::parse_elf(&bytes).unwrap();
        assert_eq!(elf.arch(), Some(arch));
        let r = elf.kernel_resources(&want).unwrap();
        assert_eq!(o["vgprs"], r.vgprs);
        assert_eq!(o["sgprs"], r.sgprs);
        assert_eq!(o["lds_bytes"], r.lds_bytes);
        assert_eq!(o["vgpr_spills"], r.vgpr_spills);
        assert!(
            r.vgprs > 0 && o["waves_per_simd"].as_u64().unwrap() >= 1,
            "{o}"
        );
        assert_eq!(o["bytes"], bytes.len());
    }
    let _ = std::fs::remove_dir_all(&out);

    // The layout alone: its append kernel, and nothing else compiled.
    let o = attnforge(&["build", "--layout", LAYOUT, "--arch", "gfx90a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("af_append_f16_nhd_p16_h2_d64"), "{text}");
    assert!(text.contains("\n1 code object: "), "{text}");
}

#[test]
fn build_compiles_cubins_with_nvcc_and_reads_ptxas_resources() {
    assert!(
        attnforge::codegen::build::find_nvcc().is_some(),
        "no nvcc: run scripts/setup.sh (it installs NVIDIA's compiler from PyPI)"
    );
    let out = std::env::temp_dir().join(format!("attnforge-cli-nvcc-{}", std::process::id()));
    let v = json(&attnforge(&[
        "build",
        "--layout",
        LAYOUT,
        "--attention",
        ATTENTION,
        "--kernel",
        "decode",
        "--arch",
        "sm_80,sm_90",
        "--out-dir",
        out.to_str().unwrap(),
        "--json",
    ]));
    let objects = v.as_array().unwrap();
    assert_eq!(objects.len(), 2, "{v}");
    let want = symbol(&KernelSpec::Decode(spec()));
    for (o, arch) in objects.iter().zip(["sm_80", "sm_90"]) {
        assert_eq!(
            (o["symbol"].as_str(), o["arch"].as_str()),
            (Some(&want[..]), Some(arch))
        );
        let bytes = std::fs::read(o["path"].as_str().unwrap()).unwrap();
        let cubin = attnforge::codegen::cubin::parse_cubin(&bytes).unwrap();
        assert_eq!(cubin.arch(), arch);
        // The figures are ptxas's own lines for this kernel and arch.
        let log = std::fs::read_to_string(o["log"].as_str().unwrap()).unwrap();
        let used = log
            .lines()
            .skip_while(|l| !l.contains(&format!("'{want}' for '{arch}'")))
            .find(|l| l.contains("Used "))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            used.contains(&format!("Used {} registers", o["registers"])),
            "{used} vs {o}"
        );
        assert_eq!(o["spill_stores"], 0, "{o}");
        assert!(o["warps_per_sm"].as_u64().unwrap() >= 4, "{o}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
