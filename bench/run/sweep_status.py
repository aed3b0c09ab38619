"""What each job of a sweep ended as, so `bench run -m` can say so and exit non-zero after a failure.

The parent process makes a status folder and names it in BENCH_SWEEP_STATUS, which every job inherits
(local, joblib / loky and Ray workers are started from this process; Slurm jobs through submitit get the
submitting environment and must see the same filesystem, as they do the results folder). Each job writes one
small JSON there; after the last job the parent counts them, prints one line and removes the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ENV = "BENCH_SWEEP_STATUS"


def start() -> Path:
    base = Path(os.environ.get("BENCH_CACHE_DIR") or tempfile.gettempdir()) / "sweeps"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sweep-", dir=base))
    os.environ[ENV] = str(path)
    return path


def report(status: str, overrides: list[str], path=None, error=None) -> None:
    where = os.environ.get(ENV)
    if not where:
        return
    try:
        Path(where, f"{uuid.uuid4().hex}.json").write_text(json.dumps(
            {"status": status, "overrides": list(overrides), "path": path, "error": error}))
    except OSError:
        pass  # the summary then misses this job; the job's own record and output still say what happened


def finish(path: Path) -> int:
    """Print the one-line summary; returns the number of failed jobs."""
    jobs = []
    for f in sorted(Path(path).glob("*.json")):
        try:
            jobs.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(ENV, None)
    n = {s: sum(1 for j in jobs if j["status"] == s) for s in ("ok", "skipped", "failed")}
    failed = [j for j in jobs if j["status"] == "failed"]
    line = f"[bench] sweep: {n['ok']} ok, {n['skipped']} skipped, {n['failed']} failed"
    if failed:
        paths = [j["path"] for j in failed if j.get("path")]
        where = f"; failed records: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}" if paths else ""
        first = next((j["error"] for j in failed if j.get("error")), None)
        line += where + (f"; first error: {first.splitlines()[0][:200]}" if first else "")
        print(line, file=sys.stderr)
    else:
        print(line)
    return n["failed"]
