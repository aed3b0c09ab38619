"""The worker protocol: one Session per worker, commands as JSON lines (init, train, eval, report, exit).

`python -m bench.perf --worker` serves them on stdin / stdout (SubprocessWorker is the parent's end); with
perf.isolate=false, InProcessWorker answers the same commands in the parent's own process."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Optional


class WorkerFailed(RuntimeError):
    pass


def handle(session, msg: dict):
    """One command against one session; `init` returns the new Session."""
    cmd = msg["cmd"]
    if cmd == "init":
        from bench.perf.session import Session

        return Session(msg["cfg"], msg["perf"])
    if cmd == "exit":
        if session is not None:
            session.close()
        return {}
    if session is None:
        raise RuntimeError("no session")
    if cmd == "train":
        times, cpu = session.train(msg["n"], msg.get("timed", True))
        return {"times": times, "cpu_times": cpu}
    if cmd == "eval":
        return {"times": session.evaluate(msg["n"], msg.get("timed", True))}
    if cmd == "report":
        return session.report()
    raise ValueError(f"unknown command {cmd!r}")


def worker_main() -> None:
    """`python -m bench.perf --worker`: JSON lines in on stdin, JSON lines out on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj, default=str) + "\n")
        proto.flush()

    session = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = handle(session, msg)
            if msg["cmd"] == "init":
                session, reply = reply, {"ok": True, "build_s": round(reply.build_s, 3)}
            send({"ok": True, **reply})
        except BaseException as e:  # noqa: BLE001 - the parent records the failure and goes on
            import traceback

            send({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)})
        if msg["cmd"] == "exit":
            break


class SubprocessWorker:
    def __init__(self, name: str, timeout_s: float, log_dir: Path):
        self.name = name
        self.timeout_s = timeout_s
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.perf", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, bufsize=1, cwd=root, env=env,
        )
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerFailed(f"worker exited ({e}); {self._tail()}") from e

    def recv(self) -> dict:
        if not self.sel.select(timeout=self.timeout_s):
            self.close(kill=True)
            raise WorkerFailed(f"no answer within perf.timeout_s={self.timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise WorkerFailed(f"worker exited with code {self.proc.returncode}; {self._tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerFailed(reply.get("error", "unknown error") + "\n" + reply.get("traceback", ""))
        return reply

    def call(self, msg: dict) -> dict:
        self.send(msg)
        return self.recv()

    def _tail(self) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text()[-1500:]
        except OSError:
            text = ""
        return f"its log ends with:\n{text}" if text else "its log is empty"

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if not kill:
                try:
                    self.call({"cmd": "exit"})
                except Exception:  # noqa: BLE001
                    pass
            try:
                self.proc.wait(timeout=5 if not kill else 0.1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sel.close()
        self._log.close()


class InProcessWorker:
    """perf.isolate=false: the same commands in this process (for tests; memory figures are then shared)."""

    def __init__(self, name: str, *_):
        self.name = name
        self.session = None
        self._pending: Optional[dict] = None

    def send(self, msg: dict) -> None:
        self._pending = msg

    def recv(self) -> dict:
        msg, self._pending = self._pending, None
        return self.call(msg)

    def call(self, msg: dict) -> dict:
        try:
            reply = handle(self.session, msg)
        except Exception as e:  # as a subprocess worker's failure: recorded, the others go on
            raise WorkerFailed(f"{type(e).__name__}: {e}") from e
        if msg["cmd"] == "init":
            self.session = reply
            return {"ok": True, "build_s": round(reply.build_s, 3)}
        return {"ok": True, **reply}

    def close(self, kill: bool = False) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
