"""One claim per config: a run holds an OS file lock on its record's claim before it trains.

A second process on the same config (a requeued Slurm job, a second sweep into the same results folder, a
colleague) does not train it again: with `claim=skip` (the default) it says who holds the claim and skips;
with `claim=wait` it waits for the holder to finish, then skips if the holder wrote an ok record and trains
(resuming from the holder's checkpoint, if any) otherwise.

What this relies on: `fcntl.flock` through the `filelock` package. The kernel drops the lock when its
process dies in any way (SIGKILL, OOM killer, node reboot), so a claim can never outlive its holder on one
machine, and no heartbeat is needed there. The holder's host / pid / start time sit in a small JSON beside
the lock, only to say who holds it; a JSON left behind by a dead holder is a stale claim, taken over with one
line. On NFS, Linux maps flock onto NFS byte-range locks (v4, or v3 with lockd), which hold across clients;
a filesystem without working locks (some FUSE mounts, NFS mounted with `nolock`) cannot keep claims apart:
give each process its own results_dir there.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

from bench.records import store as records

CLAIMS_DIR = ".claims"


class NoLocking(RuntimeError):
    """The results folder's filesystem cannot lock files."""


class ClaimHeld(Exception):
    """Another live process holds the claim on this config."""

    def __init__(self, holder: Optional[dict], record: Path):
        self.holder, self.record = holder, record
        who = (f"{holder.get('host')}:{holder.get('pid')} since {holder.get('started_at')}" if holder
               else "another process")
        super().__init__(f"{record.name} is being trained by {who}; rerun later, or claim=wait to wait for it")


def claim_paths(record: Path) -> tuple[Path, Path]:
    folder = record.parent / CLAIMS_DIR
    return folder / f"{record.stem}.lock", folder / f"{record.stem}.claim.json"


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@contextmanager
def claim(record: Path, wait: bool = False) -> Iterator[Optional[dict]]:
    """Hold the claim on `record` for the block; yields the stale claim taken over (or None).

    Raises ClaimHeld at once when another live process holds it and wait is False."""
    from filelock import FileLock, Timeout

    lock_path, info_path = claim_paths(record)
    # preserve_lock_file: never fall back to an existence-file lock, which a killed process would leave behind
    lock = FileLock(str(lock_path), mode=0o666 & ~records._umask(), preserve_lock_file=True)
    try:
        blocking, attempts = False, 0
        while True:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=-1 if blocking else 0)
                break
            except FileNotFoundError:  # a finishing holder removed the empty claims folder just now: again
                attempts += 1
                if attempts > 20:
                    raise
            except Timeout:
                held = ClaimHeld(_read(info_path), record)
                if not wait:
                    raise held from None
                print(f"[bench] waiting: {str(held).split(';')[0]}", flush=True)
                blocking = True
    except (NotImplementedError, OSError) as e:  # flock refused (Timeout never gets here: it is handled above)
        raise NoLocking(f"the results folder {record.parent} cannot lock files ({e}); claims cannot keep two "
                        "processes apart there: give each process its own results_dir and set claim=off") from None
    try:
        stale = _read(info_path)  # left by a holder that died without releasing: the lock is ours now
        if stale:
            print(f"[bench] taking over a stale claim on {record.name} by {stale.get('host')}:{stale.get('pid')} "
                  f"(since {stale.get('started_at')}): that process no longer holds the lock")
        tmp = info_path.with_name(f".{info_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }))
        os.replace(tmp, info_path)
        yield stale
    finally:
        # unlinked while still held: a waiter that opened the old file sees it unlinked after its flock and
        # retries on a new one (filelock checks st_nlink), so removing it never lets two processes in
        for p in (info_path, lock_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        lock.release()
        try:
            lock_path.parent.rmdir()  # only when no other claim is in it
        except OSError:
            pass
