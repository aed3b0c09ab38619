"""Operator counts per training step, from the torch profiler (CPU): how many aten ops one step dispatches.

On a GPU each leaf aten op is (about) one kernel launch, so the leaf count is what launch overhead scales with;
this is how the Propulsion and ID3 launch-efficiency changes are justified without a GPU (issue 14).

    .venv/bin/python scripts/op_counts.py                       # MiniLM-shaped random BERT, batch 2 x 32
    .venv/bin/python scripts/op_counts.py --methods propulsion,id3 --tiny

A step is what the Trainer does per optimizer step: forward, backward, gradient clipping (foreach, unless the
optimizer clips itself), optimizer step, zero_grad. The harness AdamW is torch's with foreach=True (its default
on a GPU; on CPU torch would loop per tensor). Columns: ``aten`` every aten op dispatched (nested ones too),
``top`` outermost aten ops, ``kernels`` leaf ops that move data (views, allocations and metadata queries left out;
a foreach op counted once, as the one multi-tensor launch it is on a GPU), ``syncs`` device-to-host reads
(``.item()``, ``float(t)``: on a GPU each waits for the queue to drain). --detail lists the 12 most frequent
kernel ops. OP_COUNTS_METHODS_FROM=<dir> imports methods/ from <dir> (e.g. ``git archive HEAD methods``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if os.environ.get("OP_COUNTS_METHODS_FROM"):  # count another copy of methods/ (e.g. an older commit's, for before/after)
    sys.path.insert(0, os.environ["OP_COUNTS_METHODS_FROM"])

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402


#: leaf ops that launch no kernel on a GPU (views, allocations, metadata); _local_scalar_dense is counted as a sync
METADATA_OPS = frozenset(
    "aten::" + n for n in (
        "view as_strided _unsafe_view reshape t transpose expand detach resolve_conj resolve_neg empty empty_strided "
        "empty_like result_type slice select unsqueeze squeeze permute alias lift_fresh to _local_scalar_dense "
        "_reshape_alias unbind split chunk narrow view_as expand_as contiguous is_nonzero item size stride numel "
        "set_ _has_compatible_shallow_copy_type"
    ).split()
)


def _model(tiny: bool):
    from transformers import BertConfig, BertForSequenceClassification

    if tiny:
        cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_labels=2)
    else:  # all-MiniLM-L6-v2's shape, random weights
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def _method_cfg(name: str) -> dict:
    spec = {"id3_in_backward": ("id3", {"in_backward": True}), "id3": ("id3", {"in_backward": False}),
            "id3_gpu": ("id3", {"in_backward": False})}
    base, over = spec.get(name, (name, {}))
    cfg = yaml.safe_load((ROOT / "conf" / "method" / f"{base}.yaml").read_text())
    cfg.update(over)
    if base == "id3":
        cfg.update(budget=0.01, T=1000)  # every step of the window selects
    if base == "lora_dash":
        cfg.update(t=1, svd_cache=False)  # counted after the switch (the dash phase)
    return cfg


def build(name: str, tiny: bool):
    from methods import MethodContext, get_method

    if name == "id3_gpu":  # the path ID3 takes on a GPU: chunks in position order, batched selection where it exists
        from methods.id3 import ID3Optimizer

        ID3Optimizer.skip_by_bound = False
        ID3Optimizer.batched = True

    cfg = _method_cfg(name)
    method = get_method(cfg["name"])
    model = _model(tiny)
    ctx = MethodContext(task_type="seq_cls", task_name="sst2", model_type="bert", head_modules=["classifier"],
                        total_steps=1000, num_labels=2, cache_dir=str(ROOT / ".cache" / "op_counts"))
    model = method.apply(model, cfg, ctx)
    train_cfg = dict(lr=1e-4, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                     max_grad_norm=1.0, grad_accum=1, precision="fp32")
    opt = method.create_optimizer(model, cfg, ctx, train_cfg)
    if opt is None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    callbacks = method.callbacks(model, cfg, ctx)
    return model, opt, callbacks


def count(name: str, tiny: bool, batch: int, seq: int, warm: int, detail: bool, bf16: bool = False) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model, opt, callbacks = build(name, tiny)
    model.train()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size if hasattr(model, "config") else 128
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    clips_itself = bool(getattr(opt, "handles_grad_clipping", False))
    state = TrainerState()
    args = TrainingArguments(output_dir=str(ROOT / ".cache" / "op_counts"), report_to="none", use_cpu=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        if not clips_itself:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.global_step += 1
        for cb in callbacks:  # e.g. LoRA-Dash's switch
            cb.on_step_end(args, state, TrainerControl(), model=model)

    for _ in range(warm):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def is_top(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True

    def under_foreach(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::_foreach_"):
                return True
            p = p.cpu_parent
        return False

    def launches(e):  # moves data and calls no other op that does (addmm's expand / resolve_conj do not count)
        if e.name in METADATA_OPS:
            return False
        stack = list(e.cpu_children)
        while stack:
            c = stack.pop()
            if c.name.startswith("aten::") and c.name not in METADATA_OPS:
                return False
            stack.extend(c.cpu_children)
        return True

    # what would launch a kernel: ops that move data (not views / allocations / dtype queries) and call no other
    # such op, a foreach op counted once (on a GPU it is one multi-tensor launch; on CPU torch runs it per tensor)
    compute = [e for e in events if launches(e) and not under_foreach(e)]
    foreach = [e for e in events if e.name.startswith("aten::_foreach_") and not under_foreach(e)]
    row = {"method": name, "aten": len(events), "top": sum(1 for e in events if is_top(e)),
           "kernels": len(compute) + len(foreach), "syncs": sum(e.name == "aten::_local_scalar_dense" for e in events)}
    if detail:
        row["by_op"] = collections.Counter(e.name for e in compute + foreach).most_common(12)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="full,ia3,lora,propulsion,lora_dash,id3,id3_in_backward,id3_gpu",
                    help="id3_gpu: the standard mode as on a GPU (batched selection, no chunk skipping); last")
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test BERT instead of MiniLM's shape")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--warm", type=int, default=2, help="steps before the counted one")
    ap.add_argument("--bf16", action="store_true", help="forward under bf16 autocast (as train.precision=bf16)")
    ap.add_argument("--detail", action="store_true", help="the 12 most frequent leaf ops per method")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [count(m, a.tiny, a.batch, a.seq, a.warm, a.detail, a.bf16) for m in a.methods.split(",")]
    shape = "tiny BERT (2 x 32)" if a.tiny else "MiniLM-shaped BERT (6 x 384)"
    print(f"aten ops per training step, {shape}, batch {a.batch} x {a.seq}, {'bf16 autocast' if a.bf16 else 'fp32'}, "
          f"torch {torch.__version__}")
    print(f"{'method':<18}{'aten':>8}{'top':>8}{'kernels':>9}{'syncs':>7}")
    for r in rows:
        print(f"{r['method']:<18}{r['aten']:>8}{r['top']:>8}{r['kernels']:>9}{r['syncs']:>7}")
        for op, n in r.get("by_op", []):
            print(f"    {op:<40}{n:>6}")


if __name__ == "__main__":
    main()
