"""Direction selection and the on-disk SVD cache.

The SVD of a frozen matrix depends only on its bytes, so repeated runs on one base model (a sweep
over tasks, seeds, learning rates) reuse it: files are keyed by a hash of the tensor's dtype, shape
and bytes, written atomically so parallel runs can share one cache directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

#: bump when the cached content or the way it is computed changes
_CACHE_VERSION = "v1"


def weight_key(weight: torch.Tensor) -> str:
    """Identity of a weight: blake2b over dtype, shape and raw bytes (one pass over the matrix)."""
    t = weight.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_CACHE_VERSION}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def svd_fp32(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD W = U diag(S) Vh of the (d_out, d_in) matrix, in float32 on the weight's device."""
    return torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)


@dataclass
class SvdStats:
    """What one switch cost, for the result record."""

    hits: int = 0
    misses: int = 0
    hash_seconds: float = 0.0
    svd_seconds: float = 0.0
    io_seconds: float = 0.0
    keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "svd_cache_hits": self.hits,
            "svd_cache_misses": self.misses,
            "hash_seconds": round(self.hash_seconds, 4),
            "svd_seconds": round(self.svd_seconds, 4),
            "cache_io_seconds": round(self.io_seconds, 4),
        }


class SvdCache:
    """SVDs of frozen matrices; on disk under ``<cache_dir>/lora_dash_svd`` when a directory is given."""

    def __init__(self, cache_dir: Optional[str]):
        self.dir = Path(cache_dir) / "lora_dash_svd" if cache_dir else None
        self.stats = SvdStats()

    def get(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.dir is None:
            t0 = time.perf_counter()
            out = svd_fp32(weight)
            self.stats.svd_seconds += time.perf_counter() - t0
            self.stats.misses += 1
            return out
        from safetensors.torch import load_file, save_file

        t0 = time.perf_counter()
        key = weight_key(weight)
        self.stats.hash_seconds += time.perf_counter() - t0
        self.stats.keys.append(key)
        path = self.dir / f"{key}.safetensors"
        if path.is_file():
            t0 = time.perf_counter()
            try:
                d = load_file(str(path), device=str(weight.device))
                out = (d["U"], d["S"], d["Vh"])
            except Exception:  # noqa: BLE001 - a truncated / foreign file: recompute and overwrite
                out = None
            self.stats.io_seconds += time.perf_counter() - t0
            if out is not None:
                self.stats.hits += 1
                return out
        t0 = time.perf_counter()
        U, S, Vh = svd_fp32(weight)
        self.stats.svd_seconds += time.perf_counter() - t0
        self.stats.misses += 1
        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"U": U.contiguous().cpu(), "S": S.contiguous().cpu(), "Vh": Vh.contiguous().cpu()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.stats.io_seconds += time.perf_counter() - t0
        return U, S, Vh


def direction_change(
    U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """delta_i = |u_i^T dW v_i| / s_i for dW = scaling * B A, without forming dW.

    u_i^T B A v_i = sum_j (U^T B)_ij (A V)_ji: two thin products, O(k r (d_out + d_in)).
    Singular values are floored at eps * s_max so that numerically-zero directions (rank-deficient W)
    give a large but finite ratio instead of inf / nan.
    """
    UtB = U.transpose(0, 1) @ lora_B.to(U.dtype)  # (k, r)
    AV = lora_A.to(U.dtype) @ Vh.transpose(0, 1)  # (r, k)
    diag = (UtB * AV.transpose(0, 1)).sum(dim=1) * float(scaling)
    floor = torch.finfo(S.dtype).eps * S.max().clamp_min(torch.finfo(S.dtype).tiny)
    return diag.abs() / S.clamp_min(floor)


def select_directions(delta: torch.Tensor, s: int) -> torch.Tensor:
    """Indices of the s largest delta; ties go to the lower index (the larger singular value)."""
    return torch.argsort(delta, descending=True, stable=True)[:s]
