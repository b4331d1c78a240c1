"""The data a batch reads and writes: rows from a ``.jsonl`` or ``.csv`` file (read
lazily, checked against the workflow's inputs before anything runs), each row's result,
and the JSON-lines output file, which is also where a batch resumes from: running the same
batch again with the same ``--out`` keeps the rows already done (status ok) and runs only
the others, so every row appears in the output exactly once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from flowgpt.engine._lock import FileLock
from flowgpt.errors import Diagnostic, InputError, redact
from flowgpt.results import RunResult
from flowgpt.spec.inputs import MAX_NESTING, nests_deeper_than, resolve_inputs
from flowgpt.spec.workflow import Workflow
from flowgpt.usage import Usage

__all__ = [
    "BatchOutput",
    "BatchRowResult",
    "DataRow",
    "read_rows",
    "row_digest",
    "scan_rows",
    "workflow_version",
]

# How many bad rows one error message lists before saying "and N more".
_MAX_LISTED = 10
# The longest CSV value (a JSON row nests at most MAX_NESTING deep).
_MAX_FIELD = 10_000_000
_TOO_DEEP = object()
# json.dumps(doc, ensure_ascii=False, default=str), without building an encoder per line.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
# json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str): a row's digest.
_DIGEST_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class DataRow:
    """One row of a data file: its number (1-based, counting rows), where it is, and the
    inputs as written (CSV values are strings, converted like ``-i key=value``)."""

    number: int
    inputs: dict[str, Any]
    line: int = 0
    from_text: bool = False  # values are text to convert (CSV), not typed (JSON)


@dataclass
class BatchRowResult:
    """What one row of a batch produced. ``inputs`` are the values the run used (CSV text
    converted by the declared types, defaults filled in) once the run started, else the
    row as read; ``input_digest`` fingerprints the row as read, so a resumed batch notices
    changed data."""

    row: int
    inputs: dict[str, Any]
    status: Literal["ok", "failed"]
    outputs: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal | None = None
    error: str | None = None
    run_id: str | None = None
    latency_s: float = 0.0
    result: RunResult | None = None  # the whole run (per-step detail); not written out
    input_digest: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, workflow: str | None = None) -> dict[str, Any]:
        """The JSON line written to the output file."""
        doc: dict[str, Any] = {
            "row": self.row,
            "status": self.status,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "usage": self.usage.to_dict(),
            # Money as a string (no precision lost); unpriced is null, never 0.
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "error": self.error,
            "run_id": self.run_id,
            "latency_s": round(self.latency_s, 4),
            "input_digest": self.input_digest or row_digest(self.inputs),
        }
        if workflow is not None:
            doc["workflow"] = workflow
        return doc


def row_digest(inputs: Mapping[str, Any]) -> str:
    """A short fingerprint of a row's inputs, so a resumed batch notices changed data."""
    text = _DIGEST_ENCODER.encode(inputs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- reading data -------------------------------------------------------------------------


def read_rows(path: str | os.PathLike[str]) -> Iterator[DataRow]:
    """The rows of a ``.jsonl`` (one JSON object per line) or ``.csv`` file (a header
    row, then one row per line), read lazily. Blank lines are skipped; a UTF-8 byte order
    mark (Excel writes one) is not part of the first column's name."""
    path = Path(path)
    kind = _kind(path)
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (a generator holds it)
    except OSError as exc:
        raise InputError(
            f"{path}: cannot read the data file ({exc.strerror or exc})",
            hint="check the path given to --data",
        ) from None
    with f:
        try:
            if kind == "csv":
                yield from _csv_rows(path, f)
            else:
                yield from _jsonl_rows(path, f)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path}: not UTF-8 text (byte {exc.start} of a line)",
                hint="save the file as UTF-8",
            ) from None


def _kind(path: Path) -> Literal["csv", "jsonl"]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise InputError(
        f"{path}: unknown data format `{suffix or path.name}`",
        hint="give a .jsonl file (one JSON object per line) or a .csv file with a header row",
    )


def _jsonl_rows(path: Path, f: io.TextIOBase) -> Iterator[DataRow]:
    number = 0
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise InputError(
                f"{path}:{line_no}: not valid JSON ({exc})",
                hint='each line must be one JSON object, e.g. {"topic": "tea"}',
            ) from None
        except RecursionError:
            value = _TOO_DEEP  # nested deeper than Python's stack: refused just below
        if value is _TOO_DEEP or _depth_over(line, value, MAX_NESTING):
            raise InputError(
                f"{path}:{line_no}: the row nests more than {MAX_NESTING} levels of lists "
                "and objects",
                hint="flatten the row's values; inputs are data for prompts",
            )
        if not isinstance(value, dict):
            raise InputError(
                f"{path}:{line_no}: a row must be a JSON object, not {type(value).__name__}",
                hint='write each row as an object of inputs, e.g. {"topic": "tea"}',
            )
        number += 1
        yield DataRow(number, value, line_no)


def _csv_rows(path: Path, f: io.TextIOBase) -> Iterator[DataRow]:
    # Python's csv refuses fields over 131,072 characters by default: allow what a prompt
    # may hold, and say so past that.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
    reader = csv.reader(f)
    try:
        yield from _csv_records(path, reader)
    except csv.Error as exc:
        where = f"{path}:{reader.line_num}"
        if "field larger than field limit" in str(exc):
            raise InputError(
                f"{where}: a value is longer than {_MAX_FIELD:,} characters",
                hint="shorten it; a prompt cannot hold more than that anyway",
            ) from None
        raise InputError(
            f"{where}: not valid CSV ({exc})", hint="save the file as CSV (UTF-8)"
        ) from None


def _csv_records(path: Path, reader: Any) -> Iterator[DataRow]:
    header = next(reader, None)
    if header is None:
        return
    names = [h.strip() for h in header]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise InputError(
            f"{path}:1: the header row needs one distinct, non-empty name per column",
            hint="name each column after a workflow input",
        )
    number = 0
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        line_no = reader.line_num
        if len(values) != len(names):
            raise InputError(
                f"{path}:{line_no}: {len(values)} values for {len(names)} columns",
                hint="quote values that contain commas or newlines",
            )
        number += 1
        yield DataRow(number, dict(zip(names, values, strict=True)), line_no, from_text=True)


def scan_rows(path: str | os.PathLike[str], workflow: Workflow) -> int:
    """Check every row of a data file against the workflow's inputs before anything runs
    (so a bad row costs nothing), and count them. Raises InputError naming each bad row."""
    problems: list[Diagnostic] = []
    bad = count = 0
    for row in read_rows(path):
        count += 1
        try:
            resolve_inputs(workflow.spec, row.inputs, from_cli=row.from_text)
        except InputError as exc:
            bad += 1
            if len(problems) < _MAX_LISTED:
                said = "; ".join(d.message for d in exc.diagnostics)
                problems.append(
                    Diagnostic(message=f"row {row.number}: {said}", file=str(path), line=row.line)
                )
    if problems:
        more = f" ({bad - len(problems)} more not shown)" if bad > len(problems) else ""
        summary = (
            f"{bad} row{'s' * (bad != 1)} of {path} "
            f"{'does' if bad == 1 else 'do'} not fit the workflow's inputs{more}; "
            "nothing was run"
        )
        problems.append(
            Diagnostic(
                message=summary, hint="fix the rows (or the workflow's `inputs:`) and run again"
            )
        )
        raise InputError(summary, diagnostics=problems)
    if count == 0:
        raise InputError(
            f"{path}: no rows (the file is empty or has only a header); nothing was run",
            hint="give a data file with one row per run",
        )
    return count


def _depth_over(line: str, value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed from ``line``) nests deeper than ``limit``; only walked
    when the line has that many brackets at all."""
    if line.count("[") + line.count("{") <= limit:
        return False
    return nests_deeper_than(value, limit)


# -- the output file ----------------------------------------------------------------------


class BatchOutput:
    """The JSON-lines output of a batch, which is also where it resumes from.

    Opening it takes the file's lock (one writer at a time: another process gets an
    InputError naming who holds it), checks that an existing file is a batch output (it
    is never touched otherwise), then keeps the rows already done (status ok) and drops
    failed rows and any line cut short by a crash, so the rows run again are written once
    more and every row ends up in the file exactly once. The file is readable by its owner
    only (it holds prompts' inputs and replies).

    ``others`` maps files the output must never be (the data, the workflow) to what they
    are; ``version`` fingerprints the workflow (``workflow_version``), so rows done with
    another version are noticed (``stale``); ``secrets`` (the API key in use) never
    reach the file, nor does anything shaped like a key.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        workflow: str,
        *,
        others: Mapping[str | Path, str] | None = None,
        version: str | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.workflow = workflow
        self.others: dict[str | Path, str] = dict(others or {})
        self.version = version
        self.secrets = [s for s in secrets if s]
        self.done: dict[int, str] = {}  # row number -> input digest
        self.dropped = 0  # failed or unreadable lines dropped on opening
        self.stale: list[int] = []  # rows kept that another workflow version did
        self.skipped = 0  # rows `pending` left out: already done
        self._file: io.TextIOWrapper | None = None
        self._lock = FileLock(self.path, f"the output file {self.path}")

    def open(self) -> BatchOutput:
        self._refuse_others()
        self._lock.acquire()  # before reading: the file is ours until close()
        try:
            if self.path.exists():
                self._keep_done()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = open(fd, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            self._lock.release()
            raise InputError(
                f"{self.path}: cannot write the output file ({exc.strerror or exc})",
                hint="check the path given to --out",
            ) from None
        except BaseException:
            self._lock.release()
            raise
        return self

    def _refuse_others(self) -> None:
        for other, what in self.others.items():
            try:
                same = self.path.exists() and os.path.samefile(self.path, other)
            except OSError:
                same = False
            if same:
                raise InputError(
                    f"{self.path} is {what}: a batch output would replace it; nothing was run",
                    hint="give --out a new file name, e.g. results.jsonl",
                )

    def _keep_done(self) -> None:
        """Rewrite the file with the rows done only (through a temporary file, so a crash
        leaves the old one whole); refuse a file that is not a batch output untouched."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        kept = 0
        try:
            with open(self.path, encoding="utf-8", errors="replace", newline="") as src:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with open(fd, "w", encoding="utf-8") as dst:
                    for line_no, line in enumerate(src, start=1):
                        if not line.strip():
                            continue
                        doc = _parse_line(line)
                        # Only the last line may be cut short (a crash while writing).
                        torn = not line.endswith("\n") and line.startswith('{"row": ')
                        if doc is None and not torn:
                            raise self._not_ours(line_no)
                        if doc is None or doc.get("status") != "ok":
                            self.dropped += 1  # a failed row, or the last line cut short
                            continue
                        if doc.get("workflow", self.workflow) != self.workflow:
                            raise InputError(
                                f"{self.path}:{line_no}: written by workflow "
                                f"`{doc.get('workflow')}`, not `{self.workflow}`",
                                hint="give this batch its own --out file",
                            )
                        self.done[doc["row"]] = str(doc.get("input_digest", ""))
                        done_by = doc.get("workflow_version")
                        if self.version and done_by and done_by != self.version:
                            self.stale.append(doc["row"])
                        dst.write(line if line.endswith("\n") else line + "\n")
                        kept += 1
            if kept or self.dropped:
                os.replace(tmp, self.path)
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot read the earlier output ({exc.strerror or exc})",
                hint="check the path given to --out",
            ) from None
        finally:
            if tmp.exists():
                tmp.unlink()

    def _not_ours(self, line_no: int) -> InputError:
        return InputError(
            f"{self.path}:{line_no}: not a flowgpt batch output (a line of one is a JSON "
            "object with `row` and `status`); it was left as it is and nothing was run",
            hint="give --out a new file (or an earlier batch's output to continue it)",
        )

    def pending(self, rows: Iterable[DataRow]) -> Iterator[DataRow]:
        """The rows not done yet (counting the others in ``skipped``), lazily."""
        for row in rows:
            if self.check(row):
                self.skipped += 1
            else:
                yield row

    def check(self, row: DataRow) -> bool:
        """Whether the row is already done; raises when it was done with other inputs."""
        digest = self.done.get(row.number)
        if digest is None:
            return False
        if digest and digest != row_digest(row.inputs):
            raise InputError(
                f"{self.path}: row {row.number} was done with other inputs than row "
                f"{row.number} of the data now (line {row.line}): the data changed",
                hint="write to a new --out file, or delete the old one to start over",
            )
        return True

    def write(self, result: BatchRowResult) -> None:
        assert self._file is not None, "open() first"
        doc = result.to_dict(self.workflow)
        if self.version:
            doc["workflow_version"] = self.version
        line = redact(_LINE_ENCODER.encode(doc), self.secrets)
        # Flushed per row: a crash loses at most the rows still in flight.
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            self._lock.release()

    def __enter__(self) -> BatchOutput:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def workflow_version(workflow: Workflow) -> str:
    """A short fingerprint of a workflow's text and of the prompt files it loads: rows of a
    batch output done by another version of the workflow are told apart by it."""
    h = hashlib.sha256((workflow.source or workflow.spec.model_dump_json()).encode())
    for name in sorted(workflow.files):
        h.update(b"\0" + name.encode() + b"\0" + workflow.files[name].encode())
    return h.hexdigest()[:16]


def _parse_line(line: str) -> dict[str, Any] | None:
    """A line of a batch output, or None when the line is not one."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("row"), int)
        or doc.get("status") not in ("ok", "failed")
    ):
        return None
    return doc
