"""Start and stop real servers (Prefect server, deployment runner) on free loopback ports, by PID.

Each process gets its own session so that a stop can reach the children it spawned (uvicorn
workers), but signals go only to processes started here: SIGTERM first, SIGKILL after a grace
period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A started process, its log file and how to tell it is ready."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def start(
    name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path, log_dir: Path
) -> Server:
    """Start ``command`` in its own session, stdout+stderr to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, log_path)


def wait_until(ready: Callable[[], bool], server: Server, timeout_s: float, what: str) -> None:
    """Poll ``ready`` until true; fail with the server's log if it dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited ({server.process.returncode}) before "
                f"{what}:\n{server.log_tail()}"
            )
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{server.name}: no {what} after {timeout_s:.0f} s:\n{server.log_tail()}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


def stop(server: Server, grace_s: float = 15.0) -> None:
    """SIGTERM the PID, wait, then SIGKILL it; finally clear what is left of its session by PID."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _kill_session_leftovers(process.pid)


def _kill_session_leftovers(session_id: int) -> None:
    """SIGKILL children still in the stopped process's own session (e.g. orphaned workers)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session_id:
                os.kill(int(entry.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
