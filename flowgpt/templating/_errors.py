"""Template errors: the public :class:`TemplateSyntaxProblem` and
:class:`TemplateRenderProblem`, and the private jinja2 exceptions the sandbox raises so that
an explanation knows what was looked up on what."""

from __future__ import annotations

from typing import Any

from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError

from flowgpt.errors import TemplateError


def _location(where: str | None, line: int | None, multiline: bool) -> str:
    parts = [where] if where else []
    if line is not None and multiline:
        parts.append(f"line {line}")
    return f" ({', '.join(parts)})" if parts else ""


def _compose(detail: str, step: str | None, where: str | None, line: int | None, ml: bool) -> str:
    head = f"step `{step}`: " if step else ""
    return f"{head}{detail}{_location(where, line, ml)}"


class TemplateSyntaxProblem(TemplateError):
    """A template or expression does not parse.

    ``line`` is 1-based inside the template text, so the loader can add the line where a
    block scalar starts; ``detail`` is the message without step or location.
    """

    def __init__(
        self,
        detail: str,
        *,
        line: int | None,
        step: str | None = None,
        where: str | None = None,
        hint: str | None = None,
        multiline: bool = True,
    ) -> None:
        super().__init__(
            _compose(f"template syntax error: {detail}", step, where, line, multiline),
            step=step,
            hint=hint,
        )
        self.detail = detail
        self.line = line
        self.where = where


class TemplateRenderProblem(TemplateError):
    """A template failed at render time (undefined name, unsafe access, skipped step...).

    ``line`` is 1-based inside the template text when known.
    """

    def __init__(
        self,
        detail: str,
        *,
        line: int | None = None,
        step: str | None = None,
        where: str | None = None,
        hint: str | None = None,
        multiline: bool = True,
    ) -> None:
        super().__init__(_compose(detail, step, where, line, multiline), step=step, hint=hint)
        self.detail = detail
        self.line = line
        self.where = where


class _MissingValue(UndefinedError):
    """An undefined value was used; carries what was looked up on what."""

    def __init__(self, message: str, obj: Any, name: Any) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


class _UnsafeAccess(SecurityError):
    """The sandbox refused an attribute; carries which one on what."""

    def __init__(self, message: str, obj: Any, name: Any) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


class _NotAValue(TemplateRuntimeError):
    """``{{ }}`` printed a function, class or other Python object."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"printed a {type(value).__name__}")
        self.value = value
