"""Running the peers' command-line tools."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import time
from collections.abc import Sequence


def run_with_tty(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal; return (exit code, output).

    Some tools (postfix(1)) write their error messages to stderr only when it is a terminal and
    to syslog otherwise. Daemons the command leaves behind may keep the terminal open, so the
    output is collected until the command itself exits, not until end of file.
    """
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
        )
        os.close(terminal)
        terminal = -1
        deadline = time.monotonic() + timeout
        while True:
            finished = proc.poll() is not None
            while select.select([controller], [], [], 0 if finished else 0.05)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: no process holds the terminal any more
                    chunk = b""
                if not chunk:
                    break
                chunks.append(chunk)
            if finished:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"{argv[0]} did not finish within {timeout}s")
        return proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)


def spawn(argv: Sequence[str], log_path: os.PathLike[str]) -> subprocess.Popen[bytes]:
    """Start a daemon that stays in the foreground, with its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM `proc`, wait for it, SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
