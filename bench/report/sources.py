"""Every record under a results folder (or in one records file), read once: runs by source and hash, the
files that could not be read, and the `bench perf` records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.records import store as records


@dataclass
class Records:
    by_source: dict[str, dict] = field(default_factory=dict)   # source (path or path:line) -> record
    by_hash: dict[str, dict] = field(default_factory=dict)     # config hash -> the ok record
    unreadable: list[dict] = field(default_factory=list)       # {source, error}
    n_runs: int = 0


def read(results: str | Path) -> Records:
    """Run records (*.json, *.json.gz, *.jsonl.gz), as bench.analysis.study_table.iter_records reads them."""
    from bench.analysis.table.frame import iter_records

    out = Records()
    for source, rec in iter_records(results):
        if not isinstance(rec, dict):
            out.unreadable.append({"source": source, "error": f"not a record (a JSON {type(rec).__name__})"})
            continue
        if rec.get("status") == "unreadable":
            out.unreadable.append({"source": source, "error": rec.get("error")})
            continue
        if rec.get("kind") == "perf" or "config_hash" not in rec:
            continue
        out.n_runs += 1
        out.by_source[source] = rec
        if rec.get("status") == "ok":
            out.by_hash.setdefault(rec["config_hash"], {**rec, "_source": source})
    return out


def perf_records(folder: str | Path | None) -> list[dict]:
    """The `bench perf` records (kind == "perf") under a folder, newest first; unreadable files are skipped
    here (the run records' scan lists them)."""
    if folder is None or not Path(folder).is_dir():
        return []
    out = []
    for path in sorted(Path(folder).rglob("perf__*.json")):
        if not records.is_record_file(path, folder):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("kind") == "perf" and isinstance(rec.get("results"), dict):
            out.append({**rec, "_source": str(path)})
    return sorted(out, key=lambda r: str(r.get("created_at") or ""), reverse=True)
