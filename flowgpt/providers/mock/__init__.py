"""The mock provider: deterministic offline replies (``MockProvider``), and the example
data it answers JSON steps with (an instance of the step's schema)."""

from __future__ import annotations

from flowgpt.providers.mock.provider import MockProvider, MockReply, ScriptedReply, default_reply

__all__ = ["MockProvider", "MockReply", "ScriptedReply", "default_reply"]
