"""The request fingerprint: one sha256 of everything that determines a model's reply.

The response cache is keyed by it and ``--resume`` compares it to tell whether a step is
unchanged. It hashes the request, which holds no API key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flowgpt.providers.base import ChatRequest

__all__ = ["request_fingerprint"]

_FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def request_fingerprint(
    request: ChatRequest, *, base_url: str | None, provider: str | None = None
) -> str:
    """A sha256 (hex) of everything that determines the reply to ``request``.

    It covers where the request goes (``base_url``; None means the default endpoint), the
    model, the messages and every setting that is set, ``response_format`` included.
    Numbers are normalised (``temperature: 1`` equals ``1.0``) and a single ``stop`` string
    equals a one-item list. The request holds no API key, so none is hashed. ``provider``
    (e.g. ``"mock"``) keeps replies of different providers apart; when None it is left
    out, so fingerprints stay comparable between versions that do not pass it.
    """
    params = request.params()
    for key in _FLOAT_PARAMS:
        if key in params:
            params[key] = float(params[key])
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    document: dict[str, Any] = {
        "v": 1,
        "base_url": base_url.strip().rstrip("/") if base_url else "default",
        "model": request.model,
        "messages": [dict(m) for m in request.messages],
        "params": params,
    }
    if provider is not None:
        document["provider"] = provider
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
