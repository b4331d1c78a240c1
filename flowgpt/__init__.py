"""flowgpt: declarative prompt workflows."""

__all__: list[str] = []
