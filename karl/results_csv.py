"""The one resumable per-image results file: a CSV that ``karl-eval`` and ``karl-complexity``
append to after every batch and that a rerun resumes.

    out = ResultsCSV(path, fields=["path", "epsilon", "kc_hat"], key=("path", "epsilon"))
    done = out.done()            # keys of the complete rows already there
    out.append(rows)             # one write per batch; rows whose key is there are dropped

A row is complete when its last column is filled: a crash mid-row leaves a line without it,
which :meth:`ResultsCSV.read` ignores and :meth:`ResultsCSV.append` cuts off before it writes,
so the row is redone and never glued to the next one. A file whose header is not ``fields``
raises :class:`ResultsFileError` (one line, naming the file and both column lists).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["ResultsCSV", "ResultsFileError", "row_key"]


class ResultsFileError(ValueError):
    """A results file that cannot be resumed (other columns)."""


def _cell(value: Any) -> str:
    """A value as ``csv`` writes it, so a key built before writing equals the one read back."""
    return "" if value is None else str(value)


def row_key(row: dict, key: Sequence[str]) -> tuple[str, ...]:
    return tuple(_cell(row.get(k)) for k in key)


class ResultsCSV:
    """Per-image rows in ``path`` with columns ``fields``, unique by the columns ``key``.

    ``hint`` ends the header-mismatch error (what the user can do about it).
    """

    def __init__(self, path: str | Path, fields: Sequence[str], key: Sequence[str],
                 hint: str = "pass --overwrite or another --out"):
        if not fields or any(k not in fields for k in key):
            raise ValueError(f"key {list(key)} must be columns of {list(fields)}")
        self.path, self.fields, self.key, self.hint = Path(path), list(fields), tuple(key), hint
        self._done: set[tuple[str, ...]] | None = None

    def _complete(self, row: dict) -> bool:
        return row.get(self.fields[-1]) not in (None, "")

    def _ends_whole(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def read(self) -> list[dict]:
        """The complete rows, in file order (a file that does not exist has none)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        whole = self._ends_whole()
        with open(self.path, newline="") as fh:
            if not fh.readline().endswith("\n"):
                return []  # only a header, cut short: no rows yet
            fh.seek(0)
            reader = csv.DictReader(fh)
            if reader.fieldnames != self.fields:
                raise ResultsFileError(f"{self.path} has columns {reader.fieldnames}, not {self.fields}: "
                                       f"{self.hint}")
            rows = list(reader)
        if not whole and rows:
            rows.pop()  # the last line was cut short by a crash (even if its last column has a prefix)
        return [r for r in rows if self._complete(r) and None not in r]

    def done(self) -> set[tuple[str, ...]]:
        """The keys of the complete rows (read once, then kept up to date by :meth:`append`)."""
        if self._done is None:
            self._done = {row_key(r, self.key) for r in self.read()}
        return self._done

    def _repair_tail(self) -> bool:
        """Cut a last line left without its newline by a crash; True when the file has rows or a header."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return False
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            return cut > 0
        return True

    def append(self, rows: Iterable[dict]) -> int:
        """Append the rows whose key is not in the file yet (one write); returns how many."""
        done = self.done()
        new = []
        for r in rows:
            k = row_key(r, self.key)
            if k not in done:
                done.add(k)
                new.append(r)
        if not new:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, lineterminator="\n")
        if not self._repair_tail():
            writer.writeheader()
        writer.writerows(new)
        with open(self.path, "a", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
        return len(new)

    def rewrite(self, rows: Iterable[dict]) -> None:
        """Replace the file by ``rows`` (deduplicated by key, in order) atomically: tmp + rename."""
        seen: dict[tuple[str, ...], dict] = {}
        for r in rows:
            seen.setdefault(row_key(r, self.key), r)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(seen.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.path)
        self._done = set(seen)
