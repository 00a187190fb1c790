#!/usr/bin/env python3
"""attnforge GPU check: merges a run's parts into results.json and results.md.

    report.py PACK_DIR RESULTS_DIR [SCRATCH_DIR]

Reads (each optional): RESULTS_DIR/steps.tsv (run.sh's steps),
correctness.jsonl (the runner's cases), speed.json (the runner's speed
part), torch.json (the Python part), device.csv (nvidia-smi), started.txt;
and PACK_DIR/manifest.json and pack-info.json. With SCRATCH_DIR, copies the
GPU outputs of failed cases (small ones) into RESULTS_DIR/failed/.
Standard library only: it runs where torch is missing.
"""

import datetime
import json
import os
import shutil
import sys


def load(path, default=None):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        return default if default is not None else {"unreadable": "%s: %r" % (path, e)}


def num(x):
    """A JSON number, or the strings the runner writes for inf/nan."""
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return x


def fmt(x, spec=".2e"):
    x = num(x)
    if x is None:
        return "-"
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    return format(x, spec)


def steps(results):
    out = []
    try:
        with open(os.path.join(results, "steps.tsv")) as fh:
            for line in fh:
                f = line.rstrip("\n").split("\t")
                if len(f) >= 5:
                    out.append({"name": f[0], "status": f[1], "rc": int(f[2]) if f[2].lstrip("-").isdigit() else None,
                                "seconds": num(float(f[3])) if f[3] else None, "limit": int(f[4]) if f[4].isdigit() else None})
    except OSError:
        pass
    return out


def device(results, torch):
    d = {}
    try:
        with open(os.path.join(results, "device.csv")) as fh:
            first = fh.readline().strip()
        parts = [p.strip() for p in first.split(",")]
        if len(parts) >= 4:
            d["nvidia_smi"] = {"name": parts[0], "driver_version": parts[1], "memory_total": parts[2],
                               "compute_cap": parts[3]}
    except OSError:
        pass
    if torch.get("gpu"):
        d["torch"] = dict(torch["gpu"], torch=torch.get("torch"), cuda=torch.get("torch_cuda"))
    return d


def correctness(pack, results, torch):
    manifest = load(os.path.join(pack, "manifest.json"), {})
    ran = {}
    try:
        with open(os.path.join(results, "correctness.jsonl")) as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    ran[r["id"]] = r
    except (OSError, ValueError):
        pass
    cases = []
    tcases = torch.get("cases", {})
    for c in manifest.get("cases", []):
        r = dict(ran.get(c["id"], {"id": c["id"], "status": "not run", "passed": False}))
        r.setdefault("label", c.get("label"))
        r["label"] = c.get("label")
        r["tolerance"] = c.get("tolerance")
        r["kernels"] = c.get("kernels")
        r["lens"] = c.get("lens")
        r["kind"] = c.get("kind")
        t = tcases.get(c["id"])
        r["vs_torch"] = t
        torch_ok = t is None or bool(t.get("passed"))
        r["passed_all"] = bool(r.get("passed")) and torch_ok
        cases.append(r)
    summary = {
        "cases": len(cases),
        "passed": sum(1 for c in cases if c["passed_all"]),
        "failed": sum(1 for c in cases if c.get("status") == "ok" and not c["passed_all"]),
        "did_not_run": sum(1 for c in cases if c.get("status") != "ok"),
        "checked_by_torch": sum(1 for c in cases if c["vs_torch"] is not None),
        "torch_failed": sum(1 for c in cases if c["vs_torch"] is not None and not c["vs_torch"].get("passed")),
    }
    return {"summary": summary, "cases": cases}


def sanitizer(results, steps_):
    out = {}
    for tool in ("memcheck", "racecheck"):
        step = next((s for s in steps_ if s["name"] == tool), None)
        log = os.path.join(results, "logs", tool + ".log")
        tail = []
        try:
            with open(log, errors="replace") as fh:
                lines = fh.read().splitlines()
            tail = [l for l in lines if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l or "FAILED" in l][-5:]
            tail = tail or lines[-5:]
        except OSError:
            pass
        out[tool] = {"status": step["status"] if step else "not run", "summary": tail}
    return out


def compile_summary(results):
    c = load(os.path.join(results, "compile.json"), {})
    kernels = c.get("kernels") or []
    if not kernels:
        return None
    done = [k for k in kernels if k.get("compiled")]
    return {"arch": c.get("arch"), "jobs": c.get("jobs"), "seconds": c.get("seconds"), "kernels": len(kernels),
            "compiled": len(done), "failed": [k["symbol"] + ": " + (k.get("error") or "")[:300] for k in kernels if k.get("error")],
            "slowest": sorted(((k["seconds"], k["symbol"]) for k in done), reverse=True)[:3]}


def markdown(res):
    L = ["# attnforge GPU check: results", "", "Date: %s" % res["date"], ""]
    d = res["device"]
    smi, tdev = d.get("nvidia_smi", {}), d.get("torch", {})
    L += ["| device | driver | memory | compute capability | torch | torch CUDA |", "|---|---|---|---|---|---|",
          "| %s | %s | %s | %s | %s | %s |" % (smi.get("name") or tdev.get("name", "-"), smi.get("driver_version", "-"),
                                             smi.get("memory_total", "-"), smi.get("compute_cap") or tdev.get("capability", "-"),
                                             tdev.get("torch", "-"), tdev.get("cuda", "-")), ""]
    L += ["## Steps", "", "| step | status | rc | seconds | limit |", "|---|---|---|---|---|"]
    for s in res["steps"]:
        L.append("| %s | %s | %s | %s | %s |" % (s["name"], s["status"], s["rc"], fmt(s["seconds"], ".1f"), s["limit"]))
    comp = res.get("compile")
    if comp:
        L += ["", "NVRTC (compile step): %d kernels without a cubin, %d compiled in %s s on %s threads at %s; %d failed%s." % (
            comp["kernels"], comp["compiled"], fmt(comp["seconds"], ".1f"), comp["jobs"], comp["arch"], len(comp["failed"]),
            "; slowest: " + ", ".join("%s %.2f s" % (n, t) for t, n in comp["slowest"]) if comp["slowest"] else "")]
        L += ["- %s" % f.replace("\n", " ") for f in comp["failed"][:10]]
    c = res["correctness"]
    s = c["summary"]
    L += ["", "## Correctness", "",
          "%d cases: %d passed, %d failed, %d did not run; %d checked by torch (%d beyond tolerance)." % (
              s["cases"], s["passed"], s["failed"], s["did_not_run"], s["checked_by_torch"], s["torch_failed"]), "",
          "Errors are relative L2 (appends: fraction of elements whose bits differ).", "",
          "| case | kernels | lens | tolerance | vs CPU backend | vs f64 reference | vs torch | CPU vs reference | result |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in c["cases"]:
        e = lambda m: fmt((m or {}).get("error"))
        result = "ok" if r["passed_all"] else ("FAILED" if r.get("status") == "ok" else r.get("status", "?").upper())
        msg = (" (%s)" % r["message"][:120].replace("|", "/")) if r.get("message") and not r["passed_all"] else ""
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s%s |" % (
            r["id"], " ".join(r.get("kernels") or []), r.get("lens") or "-", fmt(r.get("tolerance"), ".0e"),
            e(r.get("vs_cpu")), e(r.get("vs_reference")), e(r.get("vs_torch")), fmt(r.get("cpu_vs_reference")),
            result, msg))
    sp = res["speed"]
    rust, tor, cfg = sp.get("runner") or {}, sp.get("torch") or {}, sp.get("config") or {}
    copy = rust.get("copy") or {}
    L += ["", "## Speed", "",
          "Copy bandwidth (device to device, read + write counted): runner %s GB/s (%s bytes per copy), torch copy_ %s GB/s." % (
              fmt(copy.get("gb_per_s"), ".0f"), copy.get("bytes", "-"), fmt((tor.get("copy") or {}).get("gb_per_s"), ".0f")),
          "", "### Decode (%s KV heads of %s, %s query heads, pages of %s; K/V bytes read per second)" % (
              cfg.get("kv_heads", "?"), cfg.get("head_dim", "?"), cfg.get("q_heads", "?"), cfg.get("page_size", "?")), "",
          "| dtype | kernel | batch | context | pages | K/V GiB | splits | µs/step | GB/s | fraction of copy |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for f in rust.get("decode", []):
        L.append("| %s | %s | %d | %d | %s | %.2f | %d | %s | %s | %s |" % (
            f["dtype"], f.get("kernel") or "-", f["batch"], f["context"], f["pages"], f["kv_bytes"] / 2 ** 30, f["splits"],
            fmt(f["us_per_step"], ".1f"), fmt(f["gb_per_s"], ".0f" if f["gb_per_s"] >= 100 else ".3g"),
            fmt(f.get("fraction_of_copy"), ".2f" if (f.get("fraction_of_copy") or 0) >= 0.01 else ".2e")
            + (" (L2)" if f.get("l2_resident") else "")))
    L += ["", "Divided by the runner's copy bandwidth above (%s GB/s). (L2): K/V under 128 MiB, re-read"
          " every timed step, so possibly served from L2: not an HBM figure." % fmt(copy.get("gb_per_s"), ".0f"), "",
          "### Prefill (batch 1, causal) beside torch SDPA on the same data, contiguous", "",
          "| tokens | kernel | ours µs | ours TFLOP/s | SDPA µs | SDPA TFLOP/s | ours / SDPA time | ours vs SDPA error |",
          "|---|---|---|---|---|---|---|---|"]
    sdpa = {p["tokens"]: p for p in tor.get("prefill", [])}
    for f in rust.get("prefill", []):
        if f["pages"] != "contiguous":
            continue
        t = sdpa.get(f["tokens"], {})
        ratio = f["us_per_launch"] / t["sdpa_us"] if t.get("sdpa_us") else None
        L.append("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
            f["tokens"], f.get("kernel") or "-", fmt(f["us_per_launch"], ".0f"), fmt(f["tflops"], ".1f"), fmt(t.get("sdpa_us"), ".0f"),
            fmt(t.get("sdpa_tflops"), ".1f"), fmt(ratio, ".2f"), fmt(t.get("ours_vs_sdpa"))))
    L += ["", "### Paging overhead (shuffled pages against contiguous ones)", "",
          "| shape | contiguous µs | shuffled µs | overhead | same bits |", "|---|---|---|---|---|"]
    for p in rust.get("paging", []):
        L.append("| %s | %s | %s | %s | %s |" % (p["what"], fmt(p["contiguous_us"], ".1f"), fmt(p["shuffled_us"], ".1f"),
                                                 fmt(100 * p["overhead"], "+.1f") + " %", p.get("same_bits", "-")))
    for what in ("skipped", "errors"):
        if rust.get(what):
            L += ["", "Speed %s:" % what, ""] + ["- %s" % x for x in rust[what]]
    L += ["", "## compute-sanitizer", "", "| tool | status | summary |", "|---|---|---|"]
    for tool, v in res["sanitizer"].items():
        L.append("| %s | %s | %s |" % (tool, v["status"], "<br>".join(x.replace("|", "/") for x in v["summary"]) or "-"))
    if res.get("torch_missing"):
        L += ["", "torch was not importable: %s" % res["torch_missing"]]
    return "\n".join(L) + "\n"


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    pack, results = argv[1], argv[2]
    torch = load(os.path.join(results, "torch.json"), {})
    st = steps(results)
    res = {
        "schema": "attnforge-gpu-check/results-1",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "started": open(os.path.join(results, "started.txt")).read().strip() if os.path.exists(
            os.path.join(results, "started.txt")) else None,
        "device": device(results, torch),
        "pack": load(os.path.join(pack, "pack-info.json"), {}),
        "steps": st,
        "correctness": correctness(pack, results, torch),
        "speed": {"config": load(os.path.join(pack, "manifest.json"), {}).get("speed"),
                  "runner": load(os.path.join(results, "speed.json"), {}), "torch": torch.get("speed")},
        "sanitizer": sanitizer(results, st),
        "compile": compile_summary(results),
        "torch_missing": torch.get("torch_missing"),
        "torch_errors": torch.get("errors"),
    }
    if len(argv) == 4:
        budget = 8 << 20
        for c in res["correctness"]["cases"]:
            src = os.path.join(argv[3], "cases", c["id"])
            if c["passed_all"] or not os.path.isdir(src):
                continue
            size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
            if size <= budget:
                shutil.copytree(src, os.path.join(results, "failed", c["id"]), dirs_exist_ok=True)
                budget -= size
    with open(os.path.join(results, "results.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    with open(os.path.join(results, "results.md"), "w") as fh:
        fh.write(markdown(res))
    s = res["correctness"]["summary"]
    print("results: %d/%d cases passed; results.json and results.md in %s" % (s["passed"], s["cases"], results),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
