"""Chat: a conversation with a model (``ChatSession``), its history trimmed to the context
window, recorded in the run store, and set up from a workflow step."""

from __future__ import annotations

from flowgpt.chat.session import ChatSession, ChatTurn

__all__ = ["ChatSession", "ChatTurn"]
