"""Error paths of the files a batch reads and writes: a data file that is not CSV, an
output file whose lock cannot be created."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowgpt.engine import data
from flowgpt.engine._lock import FileLock
from flowgpt.engine.data import read_rows
from flowgpt.errors import InputError


class _NulRefusingReader:
    """csv.reader as Python 3.10 has it: a NUL byte in a line is an error (3.11 on reads
    it as data)."""

    def __init__(self, f: Any) -> None:
        self._reader = _REAL_READER(f)

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def __next__(self) -> list[str]:
        row: list[str] = next(self._reader)
        if any("\0" in value for value in row):
            raise csv.Error("line contains NUL")
        return row


_REAL_READER = csv.reader


def test_a_csv_file_the_csv_module_refuses_is_not_valid_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sys.version_info >= (3, 11):
        monkeypatch.setattr(data.csv, "reader", _NulRefusingReader)
    path = tmp_path / "rows.csv"
    path.write_bytes(b"topic\ntea\ncof\0fee\n")
    with pytest.raises(InputError) as info:
        list(read_rows(path))
    assert info.value.message == f"{path}:3: not valid CSV (line contains NUL)"
    assert info.value.hint == "save the file as CSV (UTF-8)"


@pytest.mark.skipif(sys.platform == "win32", reason="no file locks on Windows")
def test_a_lock_file_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.write_text("a file, not a folder")
    lock = FileLock(folder / "out.jsonl", "the output file out.jsonl")
    with pytest.raises(InputError) as info:
        lock.acquire()
    assert info.value.message == (
        f"the output file out.jsonl: cannot create its lock file {folder / 'out.jsonl.lock'} "
        "(Not a directory)"
    )
    assert info.value.hint == "check that the folder is writable"
