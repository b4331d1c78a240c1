"""flowgpt's one cache helper: its cache folder, and the one safe way to write a cache file.

Used by the genai-prices cache (prices.py, in ``user_cache_dir()``) and by the seeding of
tiktoken's encoding files (tokens.py, in tiktoken's own cache folder).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["user_cache_dir", "write_atomic"]


def user_cache_dir() -> str:
    """flowgpt's cache folder: $FLOWGPT_CACHE_DIR, else $XDG_CACHE_HOME/flowgpt, else
    ~/.cache/flowgpt."""
    explicit = os.environ.get("FLOWGPT_CACHE_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flowgpt")


def write_atomic(path: str, data: bytes, *, mode: int | None = None) -> None:
    """Write via a temporary file and a rename, so readers never see half a file.

    ``mode`` changes the permissions (mkstemp creates files readable by the owner only).
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".flowgpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
