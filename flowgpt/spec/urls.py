"""API base URLs: whether one is usable at all (``http(s)://host``, a port in range), so a
typo is a clear error before any request instead of a connection library's crash, and
whether it carries credentials (which belong in environment variables)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["base_url_problem", "url_has_credentials"]


def url_has_credentials(url: str) -> bool:
    """Whether ``url`` carries a ``user:password@`` (or a ``token@``)."""
    try:
        return "@" in urlsplit(url.strip()).netloc
    except ValueError:
        return False


def base_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as an API base URL, or None when it is fine."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    if port == 0:
        return "port 0 is not a port a server listens on"
    return None
