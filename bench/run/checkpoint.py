"""Mid-run checkpoints with exact resume (`train.save_every`), on top of the Trainer's own checkpointing.

The Trainer already saves and restores what makes a resume exact: optimizer and scheduler state
(`optimizer.pt`, `scheduler.pt`; ID3's masks and sparse moments are part of its optimizer's state_dict),
the RNG states (`rng_state.pth`), the step / epoch counters and the data position (`trainer_state.json`;
on resume it skips the batches already seen, with the epoch's permutation drawn from the same seed).
This module adds what it cannot know:

- the model's *trained* state: every parameter with requires_grad plus every persistent buffer (LoRA-Dash's
  directions and switch step live there), as one safetensors file - not the frozen base weights, not a pickle;
- the harness's own state (`bench_state.json`): the loss curve and step times so far, the evaluations done,
  the method's callbacks' state, whether an epoch's evaluation was still due;
- a manifest written last (`bench-checkpoint.json`: size and sha256 of every file). A checkpoint without a
  manifest, or whose files do not match it, is torn (the process died while writing) or corrupted: it is
  skipped, and the run resumes from the newest valid one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from bench.records import store as records
from bench.tasks.data import example_lengths

MANIFEST = "bench-checkpoint.json"
STATE_FILE = "bench_state.json"
WEIGHTS_FILE = "run_state.safetensors"
KILL_ENV = "BENCH_KILL_AFTER_CHECKPOINT"  # tests: SIGKILL this process right after the checkpoint of that step
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (the run then falls back to an older one or starts from step 0)."""


# ------------------------------------------------------------------------------------------------
# the model's trained state
# ------------------------------------------------------------------------------------------------
def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train and persistent buffers, by state_dict key; tied tensors once (the first key)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    buffers = {id(b) for b in model.buffers()}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, v in model.state_dict(keep_vars=True).items():
        if id(v) in seen or not (id(v) in trainable or id(v) in buffers):
            continue
        seen.add(id(v))
        out[key] = v.detach().to("cpu", copy=True).contiguous()
    return out


def load_trained_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path} holds tensors this model does not have: {result.unexpected_keys[:5]}")


class SeededLengthGroupedSampler(torch.utils.data.Sampler):
    """Length-grouped batches (little padding) whose order depends on the seed and the epoch only.

    transformers' LengthGroupedSampler draws from torch's global generator, whose state at the first batch depends on
    what the method's set-up drew before (LoRA's init, a random mask, ...): two methods at one seed would see other
    batches. Here each epoch's order comes from its own generator seeded by (seed, epoch); the Trainer calls
    set_epoch before each epoch, so a run resumed from a checkpoint replays the same order. Every epoch visits every
    row exactly once (a permutation, grouped in mega-batches of 50 batches sorted by length).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=gen))


class CheckpointTrainer(Trainer):
    """The Trainer, saving / loading the model's trained state instead of `save_pretrained` + a pickled args file.
    With train_sampling_strategy=group_by_length its sampler is SeededLengthGroupedSampler (the same batches for
    every method at a seed)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None and hasattr(dataset, "__len__"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return SeededLengthGroupedSampler(example_lengths(dataset), batch, seed)
        return super()._get_train_sampler(train_dataset)

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        from safetensors.torch import save_file

        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(trained_state(self.model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trained_state(model if model is not None else self.model, Path(resume_from_checkpoint) / WEIGHTS_FILE)


# ------------------------------------------------------------------------------------------------
# manifest: what makes a checkpoint valid
# ------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, step: int, config_hash: str) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    records.write_json_atomic(folder / MANIFEST, {
        "step": int(step), "config_hash": config_hash, "files": files,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def check(folder: Path, config_hash: str) -> dict:
    """The manifest of a valid checkpoint, else CheckpointError saying what is wrong with it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError("no manifest (torn: the process stopped while writing it)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable manifest ({e})") from None
    if manifest.get("config_hash") != config_hash:
        raise CheckpointError(f"written by another config ({manifest.get('config_hash')})")
    for name in (WEIGHTS_FILE, STATE_FILE, "trainer_state.json"):
        if name not in manifest.get("files", {}):
            raise CheckpointError(f"manifest lists no {name}")
    for name, meta in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"{name} is missing")
        if p.stat().st_size != meta["size"] or _sha256(p) != meta["sha256"]:
            raise CheckpointError(f"{name} does not match its checksum (corrupted)")
    return manifest


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """checkpoint-<step> folders under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return sorted(found, reverse=True)


def find_resume(root: Path, config_hash: str) -> tuple[Optional[Path], list[dict]]:
    """The newest valid checkpoint and what was wrong with the newer ones (which are then removed, so the
    resumed run can write those steps again)."""
    skipped, chosen = [], None
    for step, folder in checkpoints(root):
        try:
            check(folder, config_hash)
        except CheckpointError as e:
            skipped.append({"checkpoint": str(folder), "step": step, "why": str(e)})
            print(f"[bench] checkpoint {folder.name} skipped: {e}")
            continue
        chosen = folder
        break
    for s in skipped:
        shutil.rmtree(s["checkpoint"], ignore_errors=True)
    return chosen, skipped


# ------------------------------------------------------------------------------------------------
# the harness's state, saved with every checkpoint
# ------------------------------------------------------------------------------------------------
class HarnessState(TrainerCallback):
    """Writes `bench_state.json` and the manifest into each checkpoint the Trainer saves; restores them.

    `parts` maps a name to an object with `state_dict()` / `load_state_dict(d)` (the cost callback, the
    epoch evaluator, a method's callbacks). Registered after them, so on_save sees their state at this step.
    """

    def __init__(self, parts: dict[str, Any], config_hash: str, epoch_eval=None, steps_per_epoch: int = 0):
        self.parts = parts
        self.config_hash = config_hash
        self.epoch_eval = epoch_eval
        self.steps_per_epoch = steps_per_epoch
        self.pending_epoch_eval = False
        self.saved: list[int] = []
        self.seconds = 0.0  # time in checkpointing: the Trainer's save (after on_step_end) + ours
        self._step_end = 0.0

    def on_step_end(self, args, state, control, **kw):
        self._step_end = time.perf_counter()

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # a checkpoint at an epoch's last step is written before that epoch's evaluation runs
        due = bool(self.epoch_eval is not None and self.steps_per_epoch
                   and state.global_step % self.steps_per_epoch == 0
                   and not any(h["step"] == state.global_step for h in self.epoch_eval.history))
        blob = {"step": int(state.global_step), "pending_epoch_eval": due,
                "parts": {name: part.state_dict() for name, part in self.parts.items()}}
        records.write_json_atomic(folder / STATE_FILE, blob)
        write_manifest(folder, state.global_step, self.config_hash)
        self.saved.append(int(state.global_step))
        self.seconds += time.perf_counter() - self._step_end
        if os.environ.get(KILL_ENV) == str(state.global_step):  # fault injection for the resume tests
            os.kill(os.getpid(), signal.SIGKILL)

    def restore(self, folder: Path) -> dict:
        blob = json.loads((folder / STATE_FILE).read_text())
        for name, part in self.parts.items():
            if name in blob["parts"]:
                part.load_state_dict(blob["parts"][name])
        self.pending_epoch_eval = bool(blob.get("pending_epoch_eval"))
        return blob

    def on_train_begin(self, args, state, control, model=None, **kw):
        if self.pending_epoch_eval and self.epoch_eval is not None:
            self.pending_epoch_eval = False
            self.epoch_eval.on_epoch_end(args, state, control, model=model)
