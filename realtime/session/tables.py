"""The small tab-separated tables of a session: those it is given (a block design, an allocation) and those it
keeps (the operator's changes, the sound device's outages).

One reader, so both name the file, the line and the column the same way;
one appender, so every table the session keeps is synced alike and survives
a crash mid-row.

The tables the session keeps are plain TSV, as BIDS reads them: a cell is
written as it is, with no quoting, and read back the same way
(:func:`read_kept`), so a note such as ``"5 inch screen`` or ``n/a`` comes
back exactly. The one thing a cell cannot hold is the table's own
separators: a tab, line feed or carriage return in a cell is written as a
space (an operator's note cannot hold them anyway: :mod:`protocols.operator`).
"""

from __future__ import annotations

import csv
import logging
import os
import re

log = logging.getLogger("b2m.session")

__all__ = ["read_table", "append_rows", "read_kept", "KeptTable", "tsv_cell"]

_SEPARATORS = re.compile(r"[\t\n\r]")


def tsv_cell(value) -> str:
    """``str(value)`` as a kept table holds it: a tab, line feed or carriage return becomes a space."""
    return _SEPARATORS.sub(" ", str(value))


def read_table(path, option: str, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line number, {column: value})`` for each non-blank row, values stripped; other columns are kept too.

    Raises
    ------
    FileNotFoundError
        Naming ``option`` (e.g. ``--protocol``) and the path.
    ValueError
        Naming the file and line: a header without one of ``columns``, or a row
        with another number of fields than the header.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{option} {path}: no such file") from None
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}, line 1: no column {', '.join(missing)}; the header must hold the tab-separated "
                         f"columns {', '.join(columns)}")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields for {len(header)} columns (tab-separated)")
        out.append((line, {name: value.strip() for name, value in zip(header, row)}))
    return out


def append_rows(path: str, header, rows) -> None:
    """Append ``rows`` (lists of cells) to the table at ``path``, synced; the header first if it is new.

    A last line a crash cut short (no newline) is ended first, so the new rows
    stand on their own lines (a reader skips the torn one). Cells are written
    unquoted (:func:`tsv_cell`), as :func:`read_kept` reads them. Raises
    OSError if the disk refuses: the caller keeps the rows and gives them again.
    """
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        torn = False
        if size:
            f.seek(size - 1)
            torn = f.read(1) != b"\n"
        lines = ([] if size else ["\t".join(map(tsv_cell, header))]) + ["\t".join(map(tsv_cell, r)) for r in rows]
        f.write((("\n" if torn else "") + "\n".join(lines) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def read_kept(path: str, parse) -> list:
    """The rows of a table the session keeps (``[]`` if there is none), each through ``parse``.

    ``parse`` turns a row (a dict of the header's columns to strings; a short
    row's missing ones None) into the caller's value. A row it refuses
    (KeyError, TypeError or ValueError), such as the last one of a crash cut
    short, is skipped with a warning naming the file and line.

    Cells are read as :func:`append_rows` wrote them: unquoted, so a ``"`` in
    a cell is kept as it is and never joins rows. Bytes that are not UTF-8
    (a character a crash cut in two) are read as U+FFFD, in a row then skipped.
    """
    if not os.path.exists(path):
        return []
    out = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line, r in enumerate(rows, start=2):
            try:
                out.append(parse(r))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("%s line %d is not a complete row (%s): skipped", path, line, e)
    return out


class KeptTable:
    """A table the session keeps, appended to row by row (:func:`append_rows`): a row the disk refuses is held
    and written with the next one.

    Parameters
    ----------
    path : str
    header : sequence of str
    """

    def __init__(self, path: str, header):
        self.path, self.header = path, tuple(header)
        self.held: list[list] = []  # rows not on disk yet

    def append(self, cells) -> OSError | None:
        """Append one row (and any held before it); the disk's refusal is returned, the rows held."""
        self.held.append(list(cells))
        try:
            append_rows(self.path, self.header, self.held)
        except OSError as e:
            return e
        self.held.clear()
        return None
