"""A loaded workflow: the spec plus what the engine and the checks need to know about its
source (where each value was written, and the contents of ``system_file``/``prompt_file``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowgpt.spec.models import StepSpec, WorkflowSpec

__all__ = ["Location", "SourceMap", "TemplateSource", "Workflow"]

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Location:
    file: str | None
    line: int | None = None
    col: int | None = None


@dataclass(frozen=True)
class _Mark:
    line: int  # 1-based
    col: int  # 1-based
    style: str | None = None  # YAML scalar style: None (plain), "'", '"', "|", ">"


@dataclass
class SourceMap:
    """Where each value of the YAML document was written, by its path in the document."""

    file: str | None
    marks: dict[Path_, _Mark] = field(default_factory=dict)  # where each value starts
    key_marks: dict[Path_, _Mark] = field(default_factory=dict)  # where its key starts
    lines: Sequence[str] = ()

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> Location:
        """The location of the deepest written value on ``path`` (of its key with ``key``).

        Paths from pydantic may carry extra parts (union member names); those are skipped.
        """
        best = self.marks.get(())
        current: Path_ = ()
        for part in path:
            candidate = (*current, part)
            if candidate in self.marks:
                current = candidate
                best = self.marks[candidate]
        if key and current in self.key_marks:
            best = self.key_marks[current]
        if best is None:
            return Location(self.file)
        return Location(self.file, best.line, best.col)

    def template_line(self, path: Sequence[str | int], line_in_template: int) -> Location:
        """Map a line inside a template string to the line of the file it was written on."""
        mark = self.marks.get(tuple(path))
        if mark is None:
            return self.locate(path)
        if mark.style in ("|", ">"):
            # Block scalars start on the line after the indicator.
            line = mark.line + line_in_template
            text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
            return Location(self.file, line, len(text) - len(text.lstrip(" ")) + 1)
        if line_in_template == 1:
            return Location(self.file, mark.line, mark.col)
        return Location(self.file, mark.line + line_in_template - 1, None)


@dataclass(frozen=True)
class TemplateSource:
    """One template of a step: its text and where it came from."""

    text: str
    path: Path_  # where it sits in the YAML document
    file: str | None = None  # set when it was read from system_file / prompt_file


@dataclass
class Workflow:
    """A workflow ready to check or run.

    Build one with ``load_workflow(path)`` or ``parse_workflow(text)``; ``Workflow(spec)``
    works for specs made in Python (``system_file``/``prompt_file`` then need ``files``).
    """

    spec: WorkflowSpec
    path: Path | None = None
    source: str | None = None
    source_map: SourceMap | None = None
    files: dict[str, str] = field(default_factory=dict)  # system_file/prompt_file -> content
    # Derived data (the engine's run plan, step positions); the spec is frozen, so it
    # never goes stale.
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    @property
    def display_path(self) -> str:
        return str(self.path) if self.path is not None else "<workflow>"

    def step_index(self, step_id: str) -> int:
        index = self.cache.get("step_index")
        if index is None:
            index = self.cache["step_index"] = {sid: i for i, sid in enumerate(self.spec.step_ids)}
        position: int = index[step_id]
        return position

    def template(self, step: StepSpec, kind: Literal["system", "prompt"]) -> TemplateSource | None:
        """The system or user prompt template of a step, inline or from its file."""
        index = self.step_index(step.id)
        inline = step.system if kind == "system" else step.prompt
        if inline is not None:
            return TemplateSource(inline, ("steps", index, kind))
        file_name = step.system_file if kind == "system" else step.prompt_file
        if file_name is None:
            return None
        if file_name not in self.files:
            raise KeyError(f"{file_name} was not loaded; use load_workflow() or pass files=")
        return TemplateSource(
            self.files[file_name], ("steps", index, f"{kind}_file"), file=file_name
        )

    def locate(self, path: Sequence[str | int]) -> Location:
        if self.source_map is None:
            return Location(self.display_path)
        return self.source_map.locate(path)

    def locate_template_line(self, source: TemplateSource, line: int) -> Location:
        """Where line ``line`` (1-based) of a template was written."""
        if source.file is not None:
            return Location(str(self.base_dir / source.file), line, None)
        if self.source_map is None:
            return Location(self.display_path)
        return self.source_map.template_line(source.path, line)
