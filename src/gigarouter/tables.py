"""Tables printed by the CLI: rich's boxes on a terminal, plain aligned columns anywhere else.

Piped into a file, ``less`` or ``grep``, a rich table is squeezed to 80 columns and
its cells wrap over several lines. Off a terminal each row is one line instead: the
columns padded to their widest cell, two spaces apart, no box, no colour.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


def print_table(console: Console, columns: Sequence[str], rows: Sequence[Sequence[Cell]], *,
                title: str | None = None, no_wrap: Sequence[str] = ()) -> None:
    if console.is_terminal:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, no_wrap=column in no_wrap)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    console.file.write(plain_table(columns, rows, title=title))
    console.file.flush()


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], *, title: str | None = None) -> str:
    cells = [list(columns), *([_plain(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [f"{title}:"] if title else []
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.split())      # one line per row, whatever the cell holds
