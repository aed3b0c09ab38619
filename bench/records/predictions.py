"""Per-example predictions kept with a record, so tables can run paired tests without rerunning.

Each evaluation split's predictions and labels are stored as a small dict: dtype, length and the array's
bytes, zlib-compressed and base64-encoded (a few KB per split inside the JSON record). Classification and
log-likelihood scoring keep the predicted and the gold class; generation, whose answers are free text judged by
the task's filter, keeps 1 where the answer was judged right and 0 where not, against labels of 1 (accuracy is
then the same mean), fingerprinted by the examples (prompt and gold) so that only runs on the same examples pair.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from typing import Any

import numpy as np


def encode(arr: Any) -> dict:
    a = np.asarray(arr)
    if a.dtype.kind in "iub":
        a = a.astype(np.int32)
    elif a.dtype.kind == "f":
        a = a.astype(np.float32)
    else:
        raise TypeError(f"predictions must be numeric arrays (got dtype {a.dtype})")
    a = np.ascontiguousarray(a)
    return {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "zlib_b64": base64.b64encode(zlib.compress(a.tobytes(), 9)).decode("ascii"),
    }


def decode(obj: dict) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(obj["zlib_b64"]))
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])


def encode_splits(preds: dict) -> dict:
    """{alias: {"pred": array, "label": array}} -> the record's JSON form (labels fingerprinted for pairing; a split
    may bring its own "label_fingerprint" when its labels alone do not tell its examples apart)."""
    out = {}
    for alias, d in preds.items():
        label = np.asarray(d["label"])
        out[alias] = {
            "n": int(len(label)),
            "pred": encode(d["pred"]),
            "label": encode(label),
            "label_fingerprint": d.get("label_fingerprint") or fingerprint(label),
        }
    return out


def decode_splits(obj: dict | None) -> dict:
    if not obj:
        return {}
    return {a: {"pred": decode(d["pred"]), "label": decode(d["label"]), "label_fingerprint": d.get("label_fingerprint")}
            for a, d in obj.items()}


def examples_fingerprint(rows: list) -> str:
    """The fingerprint of a split's examples themselves (e.g. [(prompt, gold), ...]): JSON, sha256, 16 hex."""
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def fingerprint(arr: Any) -> str:
    a = np.ascontiguousarray(np.asarray(arr))
    return hashlib.sha256(a.astype(np.float64).tobytes()).hexdigest()[:16]
