"""The one place a ``ProviderSpec`` (a workflow's ``provider:``) becomes a provider, and a
provider its Batch API (``batch_api_of``).

A registry keyed by ``provider.type``: each entry makes its provider, importing its module
only then (the openai SDK and llama.cpp are heavy and optional). The engine, batches and
chat sessions all make providers here; a new provider type is one more entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flowgpt.errors import SpecError
from flowgpt.providers.base import Provider
from flowgpt.spec.models import ProviderSpec

if TYPE_CHECKING:
    from flowgpt.providers.batches import BatchAPI

__all__ = ["PROVIDER_TYPES", "batch_api_of", "make_provider"]

# (spec, folder a relative path starts from) -> a provider
Maker = Callable[[ProviderSpec, "Path | None"], Provider]


def _openai(spec: ProviderSpec, base_dir: Path | None) -> Provider:
    from flowgpt.providers.openai import OpenAIProvider

    return OpenAIProvider(
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        timeout_s=spec.timeout_s,
        max_retries=spec.max_retries,
        max_rate_limit_wait_s=spec.max_rate_limit_wait_s,
    )


def _local(spec: ProviderSpec, base_dir: Path | None) -> Provider:
    from flowgpt.providers.local import LocalProvider

    return LocalProvider(spec.model_path, n_ctx=spec.n_ctx, base_dir=base_dir)


PROVIDER_TYPES: dict[str, Maker] = {"openai": _openai, "local": _local}


def make_provider(spec: ProviderSpec, base_dir: Path | None = None) -> Provider:
    """A new provider for ``spec``; ``base_dir`` is where a relative ``model_path`` starts
    (the workflow's folder; None: the current folder). The caller closes it."""
    return PROVIDER_TYPES[spec.type](spec, base_dir)


def batch_api_of(provider: Provider) -> BatchAPI:
    """The Batch API behind ``provider``; SpecError (exit 2) when it has none."""
    # Imported here: only the Batch API path needs it, not every run.
    from flowgpt.providers.batches import BatchCapable

    if isinstance(provider, BatchCapable):
        return provider.batch_api()
    if provider.name == "openai":
        from flowgpt.providers.openai import OpenAIProvider

        if isinstance(provider, OpenAIProvider):
            from flowgpt.providers.openai_batches import OpenAIBatches

            return OpenAIBatches(provider)
    raise SpecError(
        f"the {provider.name} provider has no Batch API",
        hint="the Batch API is OpenAI's (or a server's with /v1/files and /v1/batches): "
        "use an OpenAI provider for it, or run without the Batch API",
    )
