"""Secrets where they must not be: the whole text of a workflow file and of every prompt
file it loads is scanned, line by line, for API keys (``sk-...`` anywhere: in a value, a
mapping key, a comment) and private-key blocks (``-----BEGIN ... PRIVATE KEY-----``); a
``user:password@`` in a base URL is a secret too. Each is reported at the line that holds
it, and the secret itself is never repeated.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from flowgpt.errors import API_KEY_RE, Diagnostic
from flowgpt.spec.urls import url_has_credentials
from flowgpt.spec.workflow import SourceMap

__all__ = ["credentials_in_base_url", "scan_text"]

_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


def scan_text(
    text: str, file: str | None, *, skip_lines: Collection[int] = (), prompt_file: bool = False
) -> list[Diagnostic]:
    """A diagnostic (code "secret") for every line of ``text`` holding an API key or the
    start of a private key; ``skip_lines`` (1-based) already have one."""
    found: list[Diagnostic] = []
    where = "a prompt file" if prompt_file else "the workflow file"
    for number, line in enumerate(text.splitlines(), start=1):
        if number in skip_lines:
            continue
        key = API_KEY_RE.search(line)
        private = _PRIVATE_KEY.search(line)
        if key is not None:
            found.append(
                Diagnostic(
                    f"an API key (sk-...) is written in {where}",
                    file,
                    number,
                    key.start() + 1,
                    hint="remove it and keep it in an environment variable (the workflow "
                    "names it in `provider.api_key_env`); revoke the key if this file was "
                    "shared or committed"
                    + ("; prompt files are sent to the API as they are" if prompt_file else ""),
                    code="secret",
                )
            )
        elif private is not None:
            found.append(
                Diagnostic(
                    f"a private key is written in {where}",
                    file,
                    number,
                    private.start() + 1,
                    hint="remove it: "
                    + (
                        "prompt files are sent to the API as they are"
                        if prompt_file
                        else "a workflow file is no place for keys"
                    ),
                    code="secret",
                )
            )
    return found


def credentials_in_base_url(data: Any, smap: SourceMap) -> list[Diagnostic]:
    """A ``user:password@`` in ``provider.base_url``: credentials in the file, which the run
    store would keep with the workflow's text."""
    provider = data.get("provider") if isinstance(data, dict) else None
    url = provider.get("base_url") if isinstance(provider, dict) else None
    if not isinstance(url, str) or not url_has_credentials(url):
        return []
    loc = smap.locate(("provider", "base_url"))
    return [
        Diagnostic(
            "`provider.base_url` holds a user name or password (user:password@)",
            loc.file,
            loc.line,
            loc.col,
            hint="credentials belong in environment variables: send a key with "
            "`provider.api_key_env`, or put the whole URL in OPENAI_BASE_URL instead of the "
            "file; change the password if this file was shared",
            code="secret",
        )
    ]
