"""O(B) export of an ID3 run: (tensor name, flat index, value) of every entry that may have changed.

File layout (safetensors, ``id3_delta.safetensors``):
    ``<param name>::idx``   int64 flat indices, ascending
    ``<param name>::val``   their final values (the parameter's dtype)
    ``<param name>::dense`` a whole tensor trained densely (the task head), when it trained
and string metadata (format, budget, schedule, ...). Values are stored, not differences, so applying them onto
the same starting model reproduces the fine-tuned one bit for bit.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

DELTA_FILE = "id3_delta.safetensors"
FORMAT = "id3-delta/1"


def _names_by_tensor(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def save_delta(model: nn.Module, optimizer, path: str, metadata: Optional[Mapping[str, object]] = None) -> str:
    """Write the changed entries of ``optimizer``'s selective tensors (+ its dense tensors) under directory ``path``."""
    os.makedirs(path, exist_ok=True)
    names = _names_by_tensor(model)
    tensors: dict[str, torch.Tensor] = {}
    for p in optimizer.selective_params:
        idx = optimizer.changed_indices(p)
        if idx.numel() == 0:
            continue
        name = names[id(p)]
        tensors[f"{name}::idx"] = idx.detach().cpu().contiguous()
        tensors[f"{name}::val"] = p.detach().view(-1).index_select(0, idx).cpu().contiguous()
    for group in optimizer.param_groups:
        if group["selective"]:
            continue
        for p in group["params"]:
            tensors[f"{names[id(p)]}::dense"] = p.detach().cpu().contiguous()
    meta = {"format": FORMAT}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    file = os.path.join(path, DELTA_FILE)
    save_file(tensors, file, metadata=meta)
    return file


@torch.no_grad()
def apply_delta(model: nn.Module, path: str) -> list[str]:
    """Write a saved ID3 delta into ``model`` in place; returns the parameter names touched.

    ``model`` must be the starting point of the run: the same pretrained weights and, when ID3 wrapped a base method
    (``base: lora`` ...), that method applied the same way with the same seed (its fresh tensors, e.g. LoRA's A, are
    part of the starting point and only their selected entries are stored).
    """
    file = os.path.join(path, DELTA_FILE) if os.path.isdir(path) else path
    params = dict(model.named_parameters(remove_duplicate=False))
    touched = []
    with safe_open(file, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{file} is not an ID3 delta (format {meta.get('format')!r}, expected {FORMAT!r})")
        keys = list(f.keys())
        missing = sorted({k.rsplit("::", 1)[0] for k in keys} - set(params))
        if missing:
            raise KeyError(
                f"the model lacks {len(missing)} tensor(s) named in the delta, e.g. {missing[:3]}; build the same "
                "model the run started from (apply the base method first when ID3 wrapped one)"
            )
        for key in keys:
            name, kind = key.rsplit("::", 1)
            p = params[name]
            if kind == "dense":
                t = f.get_tensor(key)
                if t.shape != p.shape:
                    raise ValueError(f"{name}: saved shape {tuple(t.shape)} != model shape {tuple(p.shape)}")
                p.copy_(t)
                touched.append(name)
            elif kind == "idx":
                idx = f.get_tensor(key).to(p.device)
                val = f.get_tensor(f"{name}::val").to(device=p.device, dtype=p.dtype)
                if idx.numel() and int(idx.max()) >= p.numel():
                    raise ValueError(f"{name}: index {int(idx.max())} out of range for {p.numel()} entries")
                p.view(-1).index_copy_(0, idx, val)
                touched.append(name)
    return touched


def read_metadata(path: str) -> dict:
    file = os.path.join(path, DELTA_FILE) if os.path.isdir(path) else path
    with safe_open(file, framework="pt") as f:
        meta = dict(f.metadata() or {})
    return {k: (v if k == "format" else json.loads(v)) for k, v in meta.items()}
