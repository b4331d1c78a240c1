"""Where ``flowgpt ui`` listens: 127.0.0.1 only, on this port unless told otherwise.
(A module of its own so the command line can show the default without loading uvicorn.)"""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "HOST"]

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
