//! The correctness part with each group of cases in a process of its own
//! (`check --isolate`): a kernel that faults leaves the CUDA context
//! unusable for the rest of its process, and one that hangs never returns,
//! so on the GPU each group (a bundled item, or a variant spec) runs in a
//! child `check --only GROUP.` under a time limit; the parent merges the
//! children's results and records the cases of a child that died or ran
//! out of time as not run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::check::{self, CaseResult, Sink, Summary};
use crate::error::Error;
use crate::manifest::{Case, Manifest};

/// What a child is told.
pub struct Isolation<'a> {
    /// This program (`std::env::current_exe()`).
    pub exe: &'a Path,
    /// The child's `--driver`.
    pub driver: &'a str,
    /// The most seconds a group may take.
    pub group_seconds: u64,
}

struct Running<'a> {
    name: String,
    cases: Vec<&'a Case>,
    child: Child,
    started: Instant,
    dir: std::path::PathBuf,
}

fn spawn<'a>(
    iso: &Isolation<'_>,
    pack: &Path,
    scratch: &Path,
    results: &Path,
    name: String,
    cases: Vec<&'a Case>,
) -> Result<Running<'a>, Error> {
    let dir = results.join("groups").join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let log = dir.join("log.txt");
    let out = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
    let child = Command::new(iso.exe)
        .arg("check")
        .args([pack, scratch, &dir])
        .args([
            "--driver",
            iso.driver,
            "--jobs",
            "1",
            "--only",
            &format!("{name}."),
        ])
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .map_err(|e| Error::io(iso.exe, e))?;
    Ok(Running {
        name,
        cases,
        child,
        started: Instant::now(),
        dir,
    })
}

/// Reads a finished child's results; its cases without one are recorded
/// as not run, with `why`.
fn merge(sink: &mut Sink, r: &Running<'_>, why: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(r.dir.join("correctness.jsonl")).unwrap_or_default();
    let got: Vec<CaseResult> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for c in &r.cases {
        match got.iter().find(|g| g.id == c.id) {
            Some(g) => sink.push(g)?,
            None => sink.push(&check::failed(
                c,
                &format!(
                    "group {}: {why} (its log: {})",
                    r.name,
                    r.dir.join("log.txt").display()
                ),
            ))?,
        }
    }
    Ok(())
}

/// Runs the pack's groups (those matching `only`) in child processes,
/// `jobs` at a time; writes `results/correctness.jsonl` from theirs.
pub fn run(
    iso: &Isolation<'_>,
    pack: &Path,
    scratch: &Path,
    results: &Path,
    only: Option<&str>,
    jobs: usize,
) -> Result<Summary, Error> {
    let m = Manifest::load(pack)?;
    let cases = match only {
        Some(p) => crate::cases::only(m.cases, p),
        None => m.cases,
    };
    let mut todo = check::groups(&cases).into_iter();
    let mut sink = Sink::create(results)?;
    let mut running: Vec<Running<'_>> = Vec::new();
    let limit = Duration::from_secs(iso.group_seconds);
    loop {
        while running.len() < jobs.max(1) {
            let Some((name, group)) = todo.next() else {
                break;
            };
            match spawn(iso, pack, scratch, results, name, group.clone()) {
                Ok(r) => running.push(r),
                Err(e) => {
                    for c in group {
                        sink.push(&check::failed(c, &e.to_string()))?;
                    }
                }
            }
        }
        if running.is_empty() {
            return Ok(sink.summary);
        }
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let why = match r.child.try_wait() {
                Ok(Some(st)) => Some(match st.code() {
                    Some(0 | 1) => "it ran no such case".to_string(),
                    _ => format!("its process ended with {st}"),
                }),
                Ok(None) if r.started.elapsed() > limit => {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    Some(format!(
                        "its process ran past {}s and was killed",
                        iso.group_seconds
                    ))
                }
                Ok(None) => None,
                Err(e) => Some(format!("its process could not be waited for: {e}")),
            };
            match why {
                Some(why) => {
                    let r = running.swap_remove(i);
                    merge(&mut sink, &r, &why)?;
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
