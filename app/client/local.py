"""A server process on loopback, for the tests, the benchmarks and the demo: `peftserve serve` on a free port.

    with LocalServer(env={"PEFTSERVE_WORKERS": "1"}, cwd=workdir) as server:
        PeftServeClient(server.url, api_key).health()

`start()` launches `python -m app.cli serve --port PORT *args` (or any `argv` that binds to the port given as
`$PORT`), logging to a file, and returns once GET /health answers 200; a process that exits first, or a
deadline passed, raises `LocalServerError` with the end of the log. `stop()` sends SIGTERM and kills after a
timeout; `start()` may be called again after it (the same port, working directory and log, appended to).

Only the standard library and httpx: importing this starts nothing heavy (no torch, no app.main).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServerError(RuntimeError):
    """The server process exited before it was ready, or was not ready by the deadline."""


class LocalServer:
    """One server process on `127.0.0.1:port`; a context manager (starts on enter unless started, stops on exit).

    env: variables set over `os.environ` for the process (`self.env` is the full environment it runs with).
    cwd: its working directory (the server keeps its state, `.peftserve/`, under it); default: this one.
    args: more arguments after `serve --port PORT` (e.g. `["--log-level", "warning"]`).
    argv: instead of `peftserve serve`, this command; every `$PORT` in it becomes the port.
    log: the file its stdout and stderr go to (default: `cwd/server.log`, or a temporary file without `cwd`).
    startup_timeout: seconds `start()` waits for `health_path` to answer 200.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        args: Sequence[str] = (),
        *,
        argv: Sequence[str] | None = None,
        log: str | os.PathLike | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        health_path: str = "/health",
        startup_timeout: float = 120.0,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.env: dict[str, str] = {**os.environ, **(env or {})}
        self.cwd = Path(cwd) if cwd is not None else None
        if argv is None:
            argv = [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", "$PORT", *args]
        elif args:
            raise ValueError("args only go with the default argv (peftserve serve); put them in argv")
        self.argv = [a.replace("$PORT", str(self.port)) for a in argv]
        if log is None:
            folder = self.cwd if self.cwd is not None else Path(tempfile.gettempdir())
            log = folder / ("server.log" if self.cwd is not None else f"peftserve-server-{self.port}.log")
        self.log = Path(log)
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log_file: IO[bytes] | None = None
        self._started_once = False

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> LocalServer:
        """Launch the process and wait until it is ready; returns self. Again after `stop()`: a restart."""
        if self.running:
            raise LocalServerError(f"{self.url} is already running (pid {self.proc.pid})")
        self._close_log()
        # the first start writes a fresh log; a restart appends to it (one log for the server's whole life)
        self._log_file = self.log.open("ab" if self._started_once else "wb")
        self._started_once = True
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.wait_ready(self.startup_timeout if timeout is None else timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until GET `health_path` answers 200. The process exiting first, or the deadline: `LocalServerError`
        (a process still running at the deadline is killed)."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._close_log()
                raise LocalServerError(
                    f"server exited with {self.proc.returncode} before it was ready; {self.log}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                self.stop(timeout=5)
                raise LocalServerError(
                    f"{self.url} was not ready after {timeout:.0f} s; {self.log}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait up to `timeout` s; then SIGKILL. Nothing to do if it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- inspection ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        """The process's resident set size in bytes (VmRSS from /proc; Linux)."""
        assert self.proc is not None, "start() first"
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise LocalServerError(f"no VmRSS for pid {self.proc.pid}")

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "stopped"
        return f"LocalServer({self.url}, {state})"
