"""What the commands print: tables and progress bars, drawn by rich when it is installed.

rich comes with the ``cli`` extra (which the README's ``demo`` extra includes);
the library itself never needs it. Without it every command still runs and
prints the same facts: a table as aligned plain text, and no progress bar
(the lines the command prints anyway say how far it got).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal, TextIO

__all__ = ["HAVE_RICH", "TableColumn", "print_table", "progress_bar"]

#: Whether rich is installed (the ``cli`` extra).
HAVE_RICH = importlib.util.find_spec("rich") is not None

Justify = Literal["left", "right"]
#: A column: its header and how its cells are aligned.
TableColumn = tuple[str, Justify]


class _NoProgress:
    """Stands in for a rich ``Progress`` where rich is not installed: draws nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def add_task(self, description: str, **fields: Any) -> int:
        return 0

    def advance(self, task: int, advance: float = 1) -> None:
        return None

    def update(self, task: int, **fields: Any) -> None:
        return None


def progress_bar(
    label: str,
    unit: str,
    *,
    file: TextIO | None = None,
    transient: bool = True,
    rate: bool = False,
    console: Any = None,
) -> Any:
    """A bar for long work, drawn by rich only on a terminal; nothing without rich.

    Output piped to a file or a CI log stays the command's own lines. With
    ``rate=True`` the bar shows a ``rate`` field (``update(task, rate=...)``)
    and the time elapsed. ``console``: a rich ``Console`` to draw on (default:
    standard error, or ``file``).

    Example::

        with progress_bar("up, down, up", "revisions") as bar:
            task = bar.add_task("walk", total=12)
            bar.advance(task)
    """
    if not HAVE_RICH:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[str | ProgressColumn] = [
        TextColumn(f"  {label}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if rate:
        columns += [
            TextColumn(unit + "  {task.fields[rate]:>9} " + unit + "/s"),
            TimeElapsedColumn(),
        ]
    else:
        columns.append(TextColumn(unit))
    if console is None:
        console = Console(file=file, highlight=False) if file is not None else Console(stderr=True)
    return Progress(*columns, console=console, transient=transient)


def print_table(
    title: str,
    columns: Sequence[TableColumn],
    rows: Sequence[Sequence[str]],
    *,
    file: TextIO | None = None,
) -> None:
    """Print a table: rich's (colour and box drawing only on a terminal), else plain text.

    The last column may be long (a statement): rich folds it, plain text
    leaves it whole at the end of its line.

    Example::

        print_table("top statements", [("calls", "right"), ("statement", "left")],
                    [("1,204", "SELECT ...")])
    """
    out = file if file is not None else sys.stdout
    if HAVE_RICH:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for index, (header, justify) in enumerate(columns):
            last = index == len(columns) - 1
            table.add_column(header, justify=justify, overflow="fold" if last else "ellipsis")
        for row in rows:
            table.add_row(*row)
        Console(file=out).print(table)
        return
    widths = [
        max([len(header), *(len(row[i]) for row in rows)])
        for i, (header, _) in enumerate(columns[:-1])
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if justify == "right" else cell.ljust(width)
            for cell, width, (_, justify) in zip(cells, widths, columns, strict=False)
        ]
        return "  ".join([*parts, cells[-1]]).rstrip()

    print(title, file=out)
    print(line([header for header, _ in columns]), file=out)
    for row in rows:
        print(line(row), file=out)
