#!/usr/bin/env python3
"""attnforge GPU check, the Python part (the pack's run half runs it).

    reference.py PACK_DIR SCRATCH_DIR RESULTS_DIR

1. An independent PyTorch reference for every case the runner wrote under
   SCRATCH_DIR/cases/<id>/ (inputs, the GPU's outputs, case.json): attention
   in float64 from the documented semantics (scale, soft-cap cap*tanh(x/cap),
   ALiBi slope*(t - pos), causal, sliding window, sinks in the denominator),
   fp8 e4m3fn decoded from the bit patterns here (bias 7, max 448, 0x7f/0xff
   NaN), appends rebuilt bit for bit (fp8 rows quantized here: x/scale
   rounded to nearest even, saturating at 448). Relative L2 error against
   the case's tolerance, as the numeric tests compare.
2. Speed beside ours (on the CPU when there is no GPU, for the tests):
   device-to-device copy bandwidth (torch copy_), and
   torch.nn.functional.scaled_dot_product_attention on the prompts the
   runner's speed part wrote (SCRATCH_DIR/prefill), contiguous, causal;
   SDPA's output against ours.

Writes RESULTS_DIR/torch.json (after each part, so a timeout keeps what was
done). Without torch it records why and exits 0. Stops early (and says so)
past $ATTNFORGE_GPU_DEADLINE (seconds since the epoch).
"""

import glob
import json
import math
import os
import struct
import sys
import time
import traceback

TYPES = {"f32": 4, "f16": 2, "bf16": 2, "fp8_e4m3": 1, "i32": 4, "i64": 8}


def f32(x):
    """x rounded to the f32 the spec stores."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def e4m3_values():
    """The value of every e4m3fn code (OCP: bias 7, no infinities)."""
    out = []
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e, m = (code >> 3) & 0xF, code & 7
        if e == 0xF and m == 7:
            out.append(float("nan"))
        elif e == 0:
            out.append(sign * m * 2.0 ** -9)
        else:
            out.append(sign * (1.0 + m / 8.0) * 2.0 ** (e - 7))
    return out


def computed_slopes(n):
    """ALiBi slopes as the spec documents them: p the largest power of two
    <= n; head h < p has 2^(-8(h+1)/p), head h >= p has 2^(-4(2(h-p)+1)/p)."""
    p = 1 << (n.bit_length() - 1)
    return [2.0 ** (-8.0 * (h + 1) / p) if h < p else 2.0 ** (-4.0 * (2 * (h - p) + 1) / p) for h in range(n)]


class Reader:
    def __init__(self, torch, device, folder, files):
        self.torch, self.device, self.folder = torch, device, folder
        self.files = {f["name"]: f for f in files}
        self.lut = torch.tensor(e4m3_values(), dtype=torch.float64, device=device)

    def has(self, name):
        return name in self.files

    def raw(self, name):
        """The file's elements in their own dtype (fp8 as uint8 codes)."""
        t = self.torch
        f = self.files[name]
        path = os.path.join(self.folder, f["file"])
        with open(path, "rb") as fh:
            data = fh.read()
        if len(data) != f["count"] * TYPES[f["ty"]]:
            raise ValueError("%s: %d bytes, expected %d %s" % (path, len(data), f["count"], f["ty"]))
        dt = {"f32": t.float32, "f16": t.float16, "bf16": t.bfloat16, "fp8_e4m3": t.uint8,
              "i32": t.int32, "i64": t.int64}[f["ty"]]
        if not data:
            return t.empty(0, dtype=dt, device=self.device)
        return t.frombuffer(bytearray(data), dtype=dt).to(self.device)

    def bits(self, name):
        """The elements' bit patterns, as integers."""
        t = self.torch
        x = self.raw(name)
        ty = self.files[name]["ty"]
        return x.view({"f32": t.int32, "f16": t.int16, "bf16": t.int16}[ty]) if ty in ("f32", "f16", "bf16") else x

    def f64(self, name):
        x = self.raw(name)
        if self.files[name]["ty"] == "fp8_e4m3":
            return self.lut[x.long()]
        return x.to(self.torch.float64)

    def ints(self, name):
        return [int(v) for v in self.raw(name).cpu().tolist()]


def rel_l2(torch, got, want):
    if got.numel() != want.numel() or not bool(torch.isfinite(got).all()):
        return float("inf")
    num = float(((got - want) ** 2).sum())
    den = float((want ** 2).sum())
    return math.sqrt(num / max(den, 1e-300))


def page_rows(torch, x, spec):
    """An arena as [pages, page_size, kv_heads, head_dim]."""
    ps, h, d = spec["page_size"], spec["kv_heads"], spec["head_dim"]
    pages = x.numel() // (ps * h * d)
    if spec["order"] == "NHD":
        return x.view(pages, ps, h, d)
    return x.view(pages, h, ps, d).transpose(1, 2)


def attention(torch, case, r):
    spec, a = case["spec"], case["spec"]["attention"]
    h, d, qh = spec["kv_heads"], spec["head_dim"], a["q_heads"]
    group = qh // h
    k, v = page_rows(torch, r.f64("k"), spec), page_rows(torch, r.f64("v"), spec)
    if r.has("k_scale"):
        k = k * r.f64("k_scale").view(1, 1, -1, 1)
        v = v * r.f64("v_scale").view(1, 1, -1, 1)
    indptr, indices, last = r.ints("kv_indptr"), r.ints("kv_indices"), r.ints("kv_last_page_len")
    qo = r.ints("qo_indptr")
    q = r.f64("q").view(-1, qh, d)
    scale = f32(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(d)
    cap = f32(a["logits_soft_cap"]) if a["logits_soft_cap"] is not None else None
    slopes = None
    if a["alibi"] == "computed":
        slopes = torch.tensor(computed_slopes(qh), dtype=torch.float64, device=r.device)
    elif a["alibi"] == "given":
        slopes = r.f64("alibi_slopes")
    sinks = r.f64("sinks") if a["sinks"] else None
    # A decode query is its sequence's last token: it sees the whole context.
    causal = a["causal"] or case["kind"] != "prefill"
    window = a["sliding_window"]
    heads = torch.arange(qh, device=r.device) // group
    out = torch.zeros_like(q)
    for b in range(len(indptr) - 1):
        pages = indices[indptr[b]:indptr[b + 1]]
        length = (len(pages) - 1) * spec["page_size"] + last[b] if pages else 0
        q0, q1 = qo[b], qo[b + 1]
        nq = q1 - q0
        if nq == 0 or nq > length:
            continue  # a query over an empty context: zeros
        idx = torch.tensor(pages, device=r.device)
        ks = k[idx].reshape(-1, h, d)[:length][:, heads]  # [t, qh, d]
        vs = v[idx].reshape(-1, h, d)[:length][:, heads]
        logits = torch.einsum("iqd,tqd->qit", q[q0:q1], ks) * scale  # [qh, nq, t]
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        t = torch.arange(length, device=r.device, dtype=torch.float64)
        pos = length - nq + torch.arange(nq, device=r.device, dtype=torch.float64)
        if slopes is not None:
            logits = logits + slopes.view(-1, 1, 1) * (t.view(1, 1, -1) - pos.view(1, -1, 1))
        lastv = pos if causal else torch.full_like(pos, length - 1)
        visible = t.view(1, -1) <= lastv.view(-1, 1)
        if window is not None:
            visible &= t.view(1, -1) >= (pos + 1 - window).clamp(min=0).view(-1, 1)
        logits = logits.masked_fill(~visible.unsqueeze(0), float("-inf"))
        m = logits.max(dim=-1).values  # [qh, nq]
        if sinks is not None:
            m = torch.maximum(m, sinks.view(-1, 1))
        w = torch.exp(logits - m.unsqueeze(-1))
        denom = w.sum(-1)
        if sinks is not None:
            denom = denom + torch.exp(sinks.view(-1, 1) - m)
        out[q0:q1] = torch.einsum("qit,tqd->iqd", w / denom.unsqueeze(-1), vs)
    got = r.f64("gpu.out").view(-1, qh, d)
    return rel_l2(torch, got, out)


def quantize_e4m3(torch, x, lut):
    """Codes of x (float64 holding f32 values): nearest e4m3fn value, ties
    to an even code, saturating at 448 (infinities too), NaN to 0x7f."""
    pos = lut[:127]  # codes 0..126: 0 to 448, increasing
    a = x.abs()
    idx = torch.searchsorted(pos, a.clamp(max=448.0).contiguous()).clamp(1, 126)
    lo, hi = idx - 1, idx
    dlo, dhi = a - pos[lo], pos[hi] - a
    code = torch.where((dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0)), hi, lo)
    code = torch.where(a >= 448.0, torch.full_like(code, 126), code)
    code = torch.where(torch.isnan(x), torch.full_like(code, 127), code)
    return (code | (torch.signbit(x).long() << 7)).to(torch.uint8)


def append(torch, case, r):
    spec = case["spec"]
    ps, h, d = spec["page_size"], spec["kv_heads"], spec["head_dim"]
    slots = r.ints("slots")
    errors = []
    for name, scale in (("k", "k_scale"), ("v", "v_scale")):
        want = r.bits(name + "_before").clone()
        if spec["dtype"] == "fp8_e4m3":
            rows = r.f64(name + "_new").view(-1, h, d)
            s = r.f64(scale).view(1, -1, 1)
            # x / scale in f32: an f64 quotient of f32 values, rounded once to f32.
            new = quantize_e4m3(torch, (rows / s).float().double(), r.lut).view(-1)
        else:
            new = r.bits(name + "_new")
        for i, slot in enumerate(slots):
            if slot < 0:
                continue
            page, tok = divmod(slot, ps)
            for head in range(h):
                if spec["order"] == "NHD":
                    at = ((page * ps + tok) * h + head) * d
                else:
                    at = ((page * h + head) * ps + tok) * d
                want[at:at + d] = new[(i * h + head) * d:(i * h + head + 1) * d]
        got = r.bits("gpu." + name)
        errors.append(float((got != want).sum()) / max(want.numel(), 1) if got.numel() == want.numel() else 1.0)
    return sum(errors) / 2.0


def check_cases(torch, device, scratch, out, deadline, save):
    for path in sorted(glob.glob(os.path.join(scratch, "cases", "*", "case.json"))):
        if deadline and time.time() > deadline:
            out["stopped_early"] = "deadline reached before every case was checked"
            break
        folder = os.path.dirname(path)
        t0 = time.time()
        try:
            with open(path) as fh:
                case = json.load(fh)
            r = Reader(torch, device, folder, case["files"])
            err = append(torch, case, r) if case["kind"] == "append" else attention(torch, case, r)
            tol = case["tolerance"]
            out["cases"][case["id"]] = {"error": err if math.isfinite(err) else "inf", "tolerance": tol,
                                        "passed": err <= tol, "seconds": time.time() - t0}
        except Exception as e:  # one bad case must not stop the others
            out["cases"][os.path.basename(folder)] = {"error": None, "passed": False, "message": repr(e),
                                                      "trace": traceback.format_exc(limit=3)}
    save()


def timed(torch, device, fn, min_seconds=0.1, warmup=3, max_iters=200):
    """Microseconds per call: CUDA events around N calls after warm-up
    (wall-clock on a CPU, where the tests run this)."""
    cuda = device == "cuda"

    def run(n):
        if not cuda:
            t = time.perf_counter()
            for _ in range(n):
                fn()
            return time.perf_counter() - t
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    one = max(run(1), 1e-7)
    n = max(3, min(max_iters, int(math.ceil(min_seconds / one))))
    return n, run(n) * 1e6 / n


def sdpa_call(torch, q, k, v, scale, group):
    """The fastest SDPA call that runs: FlashAttention with the GQA flag,
    FlashAttention on K/V repeated to every query head (outside the timing),
    then whatever backend torch picks; with what it is."""
    F = torch.nn.functional
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        flash = [SDPBackend.FLASH_ATTENTION]
    except ImportError:
        sdpa_kernel, flash = None, None
    kr, vr = None, None
    tries = []
    if sdpa_kernel is not None and q.is_cuda:
        tries.append(("flash, enable_gqa", flash, True))
        tries.append(("flash, K/V repeated", flash, False))
    tries.append(("default backend, enable_gqa", None, True))
    tries.append(("default backend, K/V repeated", None, False))
    for name, backends, gqa in tries:
        if not gqa and kr is None:
            kr, vr = (x.repeat_interleave(group, dim=1) for x in (k, v))
        kk, vv = (k, v) if gqa else (kr, vr)
        extra = {"enable_gqa": True} if gqa else {}

        def call(kk=kk, vv=vv, extra=extra, backends=backends):
            if backends is None:
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scale, **extra)
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=scale, **extra)

        try:
            call()
            return call, name
        except (TypeError, RuntimeError):
            continue
    raise RuntimeError("no scaled_dot_product_attention call ran")


def speed(torch, device, pack, scratch, out, deadline, save):
    s = out["speed"]
    s["device"] = device
    nbytes = 1 << 30 if device == "cuda" else 1 << 24
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    n, us = timed(torch, device, lambda: dst.copy_(src))
    s["copy"] = {"bytes": nbytes, "iters": n, "us": us, "gb_per_s": 2 * nbytes / (us * 1e-6) / 1e9,
                 "counted": "read + write"}
    del src, dst
    save()
    listed = os.path.join(scratch, "prefill", "prefill.json")
    prompts = []
    if os.path.exists(listed):
        with open(listed) as fh:
            prompts = json.load(fh)
    else:
        with open(os.path.join(pack, "manifest.json")) as fh:
            cfg = json.load(fh)["speed"]
        s["note"] = "no prefill files from the runner: SDPA timed on random data, nothing compared"
        prompts = [{"tokens": n, "q_heads": cfg["q_heads"], "kv_heads": cfg["kv_heads"], "head_dim": cfg["head_dim"],
                    "scale": 1.0 / math.sqrt(cfg["head_dim"]), "causal": True, "dtype": cfg["prefill_dtype"],
                    "files": None} for n in cfg["prefill_tokens"]]
    s["sdpa_backends"] = {k: getattr(torch.backends.cuda, k + "_sdp_enabled")()
                          for k in ("flash", "mem_efficient", "math", "cudnn")
                          if hasattr(torch.backends.cuda, k + "_sdp_enabled")}
    for p in prompts:
        if deadline and time.time() > deadline:
            s["stopped_early"] = "deadline reached"
            break
        entry = {"tokens": p["tokens"]}
        try:
            n, qh, h, d = p["tokens"], p["q_heads"], p["kv_heads"], p["head_dim"]
            dt = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[p["dtype"]]
            if p["files"]:
                r = Reader(torch, device, os.path.join(scratch, "prefill"),
                           [dict(f, name=k) for k, f in p["files"].items()])
                q, k, v = (r.raw(x).view(n, -1, d).transpose(0, 1).unsqueeze(0).contiguous() for x in "qkv")
            else:
                q = torch.rand(1, qh, n, d, device=device, dtype=dt) * 2 - 1
                k, v = (torch.rand(1, h, n, d, device=device, dtype=dt) * 2 - 1 for _ in "kv")
            run, entry["sdpa"] = sdpa_call(torch, q, k, v, p["scale"], qh // h)
            iters, us = timed(torch, device, run)
            flops = 4.0 * qh * d * n * (n + 1) / 2.0
            entry.update({"iters": iters, "sdpa_us": us, "sdpa_tflops": flops / (us * 1e-6) / 1e12,
                          "ours_us": p.get("ours_us"), "flops": flops})
            if p.get("ours_us"):
                entry["ours_tflops"] = flops / (p["ours_us"] * 1e-6) / 1e12
            if p["files"]:
                ours = r.f64("out").view(n, qh, d)
                theirs = run().squeeze(0).transpose(0, 1).double()
                err = rel_l2(torch, ours, theirs)
                entry.update({"ours_vs_sdpa": err if math.isfinite(err) else "inf", "tolerance": 2e-3 if dt != torch.bfloat16 else 1e-2})
                entry["passed"] = err <= entry["tolerance"]
            del q, k, v
            if device == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:
            entry["error"] = repr(e)
        s["prefill"].append(entry)
        save()


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    pack, scratch, results = argv[1:]
    os.makedirs(results, exist_ok=True)
    deadline = float(os.environ.get("ATTNFORGE_GPU_DEADLINE", "0") or 0)
    out = {"schema": "attnforge-gpu-check/torch-1", "torch": None, "cases": {},
           "speed": {"prefill": []}, "errors": []}
    target = os.path.join(results, "torch.json")

    def save():
        with open(target + ".tmp", "w") as fh:
            json.dump(out, fh, indent=1)
        os.replace(target + ".tmp", target)

    try:
        import torch
    except Exception as e:  # recorded, not an error of this step
        out["torch_missing"] = repr(e)
        save()
        print("torch is not importable: %r (recorded in torch.json)" % (e,), file=sys.stderr)
        return 0
    out["torch"] = torch.__version__
    out["torch_cuda"] = getattr(torch.version, "cuda", None)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    out["device"] = device
    if cuda:
        prop = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": prop.name, "capability": "%d.%d" % (prop.major, prop.minor),
                      "memory_bytes": prop.total_memory, "sms": prop.multi_processor_count}
    save()
    for part, fn in (("correctness", lambda: check_cases(torch, device, scratch, out, deadline, save)),
                     ("speed", lambda: speed(torch, device, pack, scratch, out, deadline, save))):
        try:
            fn()
        except Exception:
            out["errors"].append("%s: %s" % (part, traceback.format_exc(limit=5)))
        save()
    checked = out["cases"].values()
    print("torch reference: %d cases, %d within tolerance" % (len(checked), sum(1 for c in checked if c.get("passed"))),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
