"""An exclusive lock on a file that one process writes at a time (a batch's ``--out``).

The lock is ``flock`` on a file beside it, ``NAME.lock``, which holds who took it (pid,
host, when) so that a refusal can say so. The kernel releases it when its process dies,
however it dies (kill -9 included), so a lock is never left stale; the file itself is
removed on release. The data file is not locked itself because a batch replaces it (a
rewrite through a temporary file and ``os.replace``), which a lock on it would not survive.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from flowgpt.errors import InputError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows): no advisory locks, no refusals
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock"]


class FileLock:
    """``with FileLock(path):`` holds ``path``'s lock or raises InputError naming who
    holds it; ``what`` names the file in that message (e.g. "--out results.jsonl")."""

    def __init__(self, path: str | os.PathLike[str], what: str | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what or str(self.path)
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        if fcntl is None or self._fd is not None:
            return self
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise InputError(
                    f"{self.what}: cannot create its lock file {self.lock_path} "
                    f"({exc.strerror or exc})",
                    hint="check that the folder is writable",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise InputError(
                    f"{self.what} is being written by another flowgpt process ({holder}); "
                    "nothing was run",
                    hint="wait for it to finish (or stop it) and run again; to run both at "
                    "once, give each its own output file",
                ) from None
            # The holder before us may have removed the file after we opened it: then we
            # hold a lock nobody else sees. Start again on the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        who = {"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time())}
        os.write(fd, json.dumps(who).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)  # while still held: see acquire()
        finally:
            os.close(fd)  # releases the lock

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        who = {}
    if not isinstance(who, dict) or "pid" not in who:
        return "it has just started"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(who.get("since", 0))))
    return f"pid {who['pid']} on host {who.get('host', '?')}, since {since}"
