"""What a record says it read and ran on, and the checks of the tables that put records side by side.

* Data: every source of record["data"]["sources"] gets a content fingerprint in record["data"]["fingerprints"]:
  ``sha256:<hex>`` of a local parquet file (cached by path, size and mtime under <cache_dir>/fingerprints/, so a
  file is read once, not every run), ``hub:<revision>`` for hub data, None for generated data (its generator and
  seed are in the config). A table cell whose records read different data gets one warning line.
* Hardware: a short label of record["device"] (CPU model and thread count, or the GPU) shown beside step times
  and memory; a note when one column mixes step times from different hardware.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

LOCAL, HUB = "local:", "hub:"


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def file_sha256(path: str | Path, cache_dir: Optional[str | Path] = None) -> str:
    """sha256 of a file's bytes; with cache_dir the digest is kept under <cache_dir>/fingerprints/ keyed by the
    file's resolved path, size and mtime, and read back while those three are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = None
    if cache_dir is not None:
        name = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".json"
        entry = Path(cache_dir) / "fingerprints" / name
        try:
            held = json.loads(entry.read_text())
            if {k: held.get(k) for k in key} == key and held.get("sha256"):
                return held["sha256"]
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if entry is not None:
        from bench.records.store import write_json_atomic

        try:
            write_json_atomic(entry, {**key, "sha256": digest})
        except OSError:  # a read-only cache: the digest is still right, only not kept
            pass
    return digest


def _local_file(source: str) -> Optional[Path]:
    """The parquet path of a 'local:<path>[ (carved...)]' source, None when it is not one or not there."""
    if not source.startswith(LOCAL):
        return None
    rest = source[len(LOCAL):]
    for cand in (rest, rest.rsplit(" (", 1)[0]):
        if Path(cand).is_file():
            return Path(cand)
    return None


def hub_revision(repo: str) -> Optional[str]:
    """The hub's current commit of a dataset repo (what load_dataset downloads), None when it cannot be asked."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline, private, renamed: the record then says unknown (None)
        return None


def source_fingerprints(sources: dict[str, str], cache_dir: Optional[str | Path] = None) -> dict[str, Optional[str]]:
    """{source key: fingerprint} for record["data"]["sources"] (see the module doc)."""
    out: dict[str, Optional[str]] = {}
    hub_seen: dict[str, Optional[str]] = {}
    for key, source in sources.items():
        source = str(source)
        local = _local_file(source)
        if local is not None:
            out[key] = "sha256:" + file_sha256(local, cache_dir)
        elif source.startswith(HUB):
            repo = source[len(HUB):].split(" (", 1)[0].rsplit("/", 1)[0]  # hub:<repo>/<config name>
            if repo not in hub_seen:
                hub_seen[repo] = hub_revision(repo)
            out[key] = f"hub:{repo}@{hub_seen[repo]}" if hub_seen[repo] else None
        else:
            out[key] = None
    return out


def data_fingerprint(rec: dict) -> Optional[str]:
    """One short fingerprint of everything a record read (None when it records none): equal for two records
    exactly when every source's fingerprint is equal."""
    fps = ((rec.get("data") or {}).get("fingerprints")) or {}
    if not any(fps.values()):
        return None
    blob = json.dumps(sorted(fps.items()), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def mixed_data_lines(cells: Iterable[tuple[str, str, Any]]) -> list[str]:
    """One warning line per cell whose records read different data. cells: (row label, task, record), or
    (row label, task, data_fingerprint(record)) when the fingerprint is already known."""
    by_cell: dict[tuple[str, str], Counter] = {}
    for row, task, rec in cells:
        fp = data_fingerprint(rec) if isinstance(rec, dict) else rec
        if isinstance(fp, str):
            by_cell.setdefault((str(row), str(task)), Counter())[fp] += 1
    out = []
    for (row, task), seen in by_cell.items():
        if len(seen) > 1:
            each = ", ".join(f"{fp} ({n} run{'s' if n > 1 else ''})" for fp, n in sorted(seen.items()))
            out.append(f"warning: cell {row} / {task} mixes records that read different data ({each}); "
                       "rerun them on one copy (data_dir=...) or table them apart")
    return out


def fingerprint_lines(records: Iterable[dict]) -> list[str]:
    """The data a set of records read, for a summary: one line per task and source with its fingerprint(s)."""
    used: dict[tuple[str, str], Counter] = {}
    unknown = 0
    for rec in records:
        if not isinstance(rec, dict):
            continue
        data = rec.get("data") or {}
        fps = data.get("fingerprints")
        if not fps:
            unknown += 1
            continue
        for key, fp in fps.items():
            used.setdefault((str(rec.get("task")), key), Counter())[fp or "not fingerprinted"] += 1
    lines = []
    for (task, key), seen in sorted(used.items()):
        each = ", ".join(f"`{_short(fp)}` ({n})" for fp, n in sorted(seen.items()))
        lines.append(f"- {task} {key}: {each}")
    if unknown:
        lines.append(f"- {unknown} record(s) written before data fingerprints were recorded: unknown")
    return lines


def _short(fp: str) -> str:
    kind, _, value = fp.partition(":")
    return f"{kind}:{value[:16]}" if kind == "sha256" else fp


# ------------------------------------------------------------------------------------------------
# hardware
# ------------------------------------------------------------------------------------------------
def hardware_label(device: Optional[dict]) -> str:
    """What a step time was measured on, short: the GPU, or the CPU model with its threads and bf16 units;
    records from before the CPU model was recorded: 'CPU (<n> cores)'."""
    d = device or {}
    if d.get("gpu"):
        mem = f", {d['gpu_memory_gb']:g} GiB" if d.get("gpu_memory_gb") else ""
        return f"{d['gpu']}{mem}"
    threads = d.get("torch_threads") or d.get("cpu_count")
    if not d.get("cpu_model"):
        return f"CPU ({d.get('cpu_count', '?')} cores, {threads} threads; model not recorded)" if d else "unknown"
    bf16 = ", bf16 units" if d.get("cpu_bf16") else ""
    return f"{d['cpu_model']} ({threads} threads{bf16})"


def hardware_of(records: Iterable[Any]) -> list[str]:
    """The distinct hardware labels of some records (or of labels already made), in first-seen order."""
    seen: dict[str, None] = {}
    for rec in records:
        if isinstance(rec, dict):
            seen.setdefault(hardware_label(rec.get("device")), None)
        elif isinstance(rec, str):
            seen.setdefault(rec, None)
    return list(seen)


def hardware_text(records: Iterable[Any]) -> str:
    labels = hardware_of(records)
    return " + ".join(labels) if labels else "-"


def mixed_hardware_note(records: Iterable[Any], what: str = "step times and memory") -> Optional[str]:
    """One line when records (or hardware labels) measured on different hardware share a column, else None."""
    labels = hardware_of(records)
    if len(labels) < 2:
        return None
    return (f"note: {what} in one column come from {len(labels)} different machines ({'; '.join(labels)}): "
            "compare them only within one machine")
