//! The run half's correctness part: every case of the manifest on a
//! device, compared with the CPU backend's output and the f64 reference
//! carried in the pack. Cases run in groups (one bundled item, or one
//! variant spec), each group on a device of its own, groups in parallel
//! threads (so NVRTC compiles in parallel). Each result is appended to
//! `correctness.jsonl` as soon as it is known, so a run cut short by a
//! timeout keeps what it did; inputs and outputs go to the scratch folder
//! for the Python part.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use attnforge_runtime::launch::Gpu;
use serde::{Deserialize, Serialize};

use crate::compare::{self, Metrics};
use crate::drivers::{registry, Backend};
use crate::error::{write, write_json, Error};
use crate::exec::{execute, Executed};
use crate::manifest::{Case, FileRef, Kind, Manifest};
use crate::raw::Array;

/// One case's result, a line of `correctness.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case's id.
    pub id: String,
    /// `bundled` or `variant`.
    pub group: String,
    /// The bundled item.
    pub item: Option<String>,
    /// The case's kind.
    pub kind: Kind,
    /// The symbols launched.
    pub kernels: Vec<String>,
    /// Context lengths.
    pub lens: Vec<usize>,
    /// `ok` (it ran), `error` or `panic`.
    pub status: String,
    /// The error, for a case that did not run.
    pub message: Option<String>,
    /// Wall time of the case (kernel loads included).
    pub seconds: f64,
    /// Whether the inputs drawn here have the build half's SHA-256.
    pub inputs_match: bool,
    /// Against the CPU backend's output.
    pub vs_cpu: Option<Metrics>,
    /// Against the f64 reference (attention).
    pub vs_reference: Option<Metrics>,
    /// The CPU backend's own error against the reference (from the pack).
    #[serde(with = "crate::compare::float::option")]
    pub cpu_vs_reference: Option<f64>,
    /// Ran, same inputs, and within tolerance of both.
    pub passed: bool,
}

/// What the correctness part found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases within tolerance.
    pub passed: usize,
    /// Cases that ran but are beyond tolerance (or had other inputs).
    pub failed: usize,
    /// Cases that did not run.
    pub errors: usize,
}

/// The case's expected file `name`, read from the pack.
fn expected(pack: &Path, case: &Case, name: &str) -> Result<Array, Error> {
    let f = case
        .expected
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            Error::bad_case(
                &case.id,
                format!("the manifest names no expected `{name}` file"),
            )
        })?;
    Array::read(&pack.join(&f.file), &f.name, f.ty, f.count)
}

/// Writes the case's arrays and `case.json` for the Python part.
fn write_scratch(scratch: &Path, case: &Case, run: &Executed) -> Result<(), Error> {
    let dir = scratch.join("cases").join(&case.id);
    let mut files = Vec::new();
    let gpu = run.outputs.iter().map(|a| (format!("gpu.{}", a.name), a));
    for (name, a) in run.inputs.iter().map(|a| (a.name.clone(), a)).chain(gpu) {
        let file = format!("{name}.bin");
        write(&dir.join(&file), &a.bytes)?;
        files.push(FileRef {
            name,
            file,
            ty: a.ty,
            count: a.len(),
        });
    }
    let json = serde_json::json!({
        "id": case.id, "kind": case.kind, "spec": case.spec, "lens": case.lens,
        "tolerance": case.tolerance, "files": files,
    });
    write_json(&dir.join("case.json"), &json)
}

fn compare(
    pack: &Path,
    case: &Case,
    run: &Executed,
) -> Result<(Option<Metrics>, Option<Metrics>), Error> {
    if case.kind == Kind::Append {
        let want = [
            expected(pack, case, "cpu.k")?,
            expected(pack, case, "cpu.v")?,
        ];
        let mut want = want.to_vec();
        for w in &mut want {
            w.name = w.name.trim_start_matches("cpu.").to_string();
        }
        return Ok((Some(compare::append(&run.outputs, &want)), None));
    }
    let out = &run.outputs[0];
    let cpu = expected(pack, case, "cpu.out")?;
    let reference = expected(pack, case, "ref.out")?.to_f64();
    Ok((
        Some(compare::attention(out, &cpu, case.tolerance)),
        Some(compare::against_reference(out, &reference, case.tolerance)),
    ))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Runs one case on `gpu` and compares it.
fn run_case<D: attnforge_runtime::driver::Driver>(
    gpu: &Gpu<D>,
    pack: &Path,
    scratch: &Path,
    case: &Case,
) -> CaseResult {
    let t = Instant::now();
    let mut r = CaseResult {
        id: case.id.clone(),
        group: case.group.clone(),
        item: case.item.clone(),
        kind: case.kind,
        kernels: case.kernels.clone(),
        lens: case.lens.clone(),
        status: "ok".into(),
        message: None,
        seconds: 0.0,
        inputs_match: false,
        vs_cpu: None,
        vs_reference: None,
        cpu_vs_reference: case.cpu_vs_reference,
        passed: false,
    };
    let done = |mut r: CaseResult, status: &str, message: String| {
        r.status = status.into();
        r.message = Some(message);
        r.seconds = t.elapsed().as_secs_f64();
        r
    };
    let run = match catch_unwind(AssertUnwindSafe(|| execute(gpu, case, false))) {
        Ok(Ok(run)) => run,
        Ok(Err(e)) => return done(r, "error", e.to_string()),
        Err(p) => return done(r, "panic", panic_message(p)),
    };
    r.inputs_match = case.inputs_sha256.as_deref() == Some(run.sha256.as_str());
    let scratch_error = write_scratch(scratch, case, &run).err();
    match compare(pack, case, &run) {
        Ok((cpu, reference)) => {
            r.passed = r.inputs_match
                && cpu.as_ref().is_some_and(|m| m.passed)
                && reference.as_ref().is_none_or(|m| m.passed);
            (r.vs_cpu, r.vs_reference) = (cpu, reference);
        }
        Err(e) => return done(r, "error", e.to_string()),
    }
    if !r.inputs_match {
        r.message = Some(format!(
            "the inputs drawn here have SHA-256 {}, the build half's {}",
            run.sha256,
            case.inputs_sha256.as_deref().unwrap_or("(none)")
        ));
    } else if let Some(e) = scratch_error {
        r.message = Some(format!("not written for the Python part: {e}"));
    }
    r.seconds = t.elapsed().as_secs_f64();
    r
}

/// The cases of each group (a bundled item's, or a variant spec's), with
/// the group's name: what its cases' ids start with, before `.kind`.
pub(crate) fn groups(cases: &[Case]) -> Vec<(String, Vec<&Case>)> {
    let mut out: Vec<(String, Vec<&Case>)> = Vec::new();
    for c in cases {
        let key =
            c.id.rsplit_once('.')
                .map_or(c.id.as_str(), |(g, _)| g)
                .to_string();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(c),
            None => out.push((key, vec![c])),
        }
    }
    out
}

/// Where results go: `correctness.jsonl` (a line per case, flushed) and
/// a line per case on stderr.
pub(crate) struct Sink {
    file: std::fs::File,
    path: std::path::PathBuf,
    pub(crate) summary: Summary,
}

impl Sink {
    /// A new `results/correctness.jsonl`.
    pub(crate) fn create(results: &Path) -> Result<Sink, Error> {
        let path = results.join("correctness.jsonl");
        std::fs::create_dir_all(results).map_err(|e| Error::io(results, e))?;
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Sink {
            file,
            path,
            summary: Summary::default(),
        })
    }

    /// Records one result.
    pub(crate) fn push(&mut self, r: &CaseResult) -> Result<(), Error> {
        let line = serde_json::to_string(r).expect("a result serializes");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        let what = match (r.status.as_str(), r.passed) {
            ("ok", true) => {
                self.summary.passed += 1;
                "ok"
            }
            ("ok", false) => {
                self.summary.failed += 1;
                "FAILED"
            }
            _ => {
                self.summary.errors += 1;
                "ERROR"
            }
        };
        let err = |m: &Option<Metrics>| {
            m.as_ref()
                .map_or("-".into(), |m| format!("{:.2e}", m.error))
        };
        eprintln!(
            "{what:6} {:58} vs cpu {:>9} vs ref {:>9} {:6.2}s{}",
            r.id,
            err(&r.vs_cpu),
            err(&r.vs_reference),
            r.seconds,
            r.message
                .as_ref()
                .map_or(String::new(), |m| format!("  {m}"))
        );
        Ok(())
    }
}

/// Runs every case of the pack (those whose id contains one of `only`'s
/// comma-separated patterns, when given) on `jobs` threads; writes
/// `results/correctness.jsonl` and the scratch folder.
pub fn run<B: Backend>(
    backend: &B,
    pack: &Path,
    scratch: &Path,
    results: &Path,
    only: Option<&str>,
    jobs: usize,
) -> Result<Summary, Error> {
    let manifest = Manifest::load(pack)?;
    let cases = match only {
        Some(p) => crate::cases::only(manifest.cases, p),
        None => manifest.cases,
    };
    let groups: Vec<Vec<&Case>> = groups(&cases).into_iter().map(|(_, g)| g).collect();
    let mut sink = Sink::create(results)?;
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<CaseResult>();
    std::thread::scope(|s| -> Result<(), Error> {
        for _ in 0..jobs.clamp(1, groups.len().max(1)) {
            let (tx, next, groups) = (tx.clone(), &next, &groups);
            s.spawn(move || loop {
                let Some(group) = groups.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let reg = group[0].item.as_deref().and_then(registry);
                let gpu = match catch_unwind(AssertUnwindSafe(|| backend.open(reg))) {
                    Ok(Ok(d)) => Gpu::new(d),
                    Ok(Err(e)) => {
                        fail_all(&tx, group, &e.to_string());
                        continue;
                    }
                    Err(p) => {
                        fail_all(&tx, group, &panic_message(p));
                        continue;
                    }
                };
                for c in group {
                    if tx.send(run_case(&gpu, pack, scratch, c)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for r in rx {
            sink.push(&r)?;
        }
        Ok(())
    })?;
    Ok(sink.summary)
}

/// Every case of `group` as not run, for `message`.
fn fail_all(tx: &mpsc::Sender<CaseResult>, group: &[&Case], message: &str) {
    for c in group {
        if tx.send(failed(c, message)).is_err() {
            return;
        }
    }
}

/// A case that did not run, for `message`.
pub(crate) fn failed(c: &Case, message: &str) -> CaseResult {
    CaseResult {
        id: c.id.clone(),
        group: c.group.clone(),
        item: c.item.clone(),
        kind: c.kind,
        kernels: c.kernels.clone(),
        lens: c.lens.clone(),
        status: "error".into(),
        message: Some(message.to_string()),
        seconds: 0.0,
        inputs_match: false,
        vs_cpu: None,
        vs_reference: None,
        cpu_vs_reference: c.cpu_vs_reference,
        passed: false,
    }
}
