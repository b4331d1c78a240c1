"""Chat: a conversation with a model (``ChatSession``), its history trimmed to the context
window (``history``), recorded in the run store (``recorder``), and set up from a workflow
step (``setup``)."""

from __future__ import annotations

from flowgpt.chat.session import ChatSession
from flowgpt.chat.turn import ChatTurn

__all__ = ["ChatSession", "ChatTurn"]
