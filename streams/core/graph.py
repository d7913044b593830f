"""The lane layout of a version graph: the one algorithm behind ``log --graph`` and the
console's drawing.

Commits come newest first, each with its parents; every line of descent gets a lane (a
column), reused once it ends, as ``git log --graph`` does. The layout is a list of rows:
one ``commit`` row per commit, in the order given, and between them the connector rows a
drawing needs: a ``join`` row where lanes meet at a commit (their lines bend left into
it), a ``fork`` row where a merge opens a lane for its second parent. The terminal
(``modelvc.render``) prints these rows as ASCII; the console draws them as SVG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streams.core.errors import InvalidCommand

RowKind = Literal["commit", "join", "fork"]
JOIN, FORK = "/", "\\"


@dataclass(frozen=True)
class GraphRow:
    """One row of the drawing.

    ``lanes``: which lanes hold a line of descent on this row. ``column``: the lane of
    the row's commit (-1 on a connector row). ``marks``: (lane, "/" or "\\"): on a join
    row the line of ``lane`` bends into ``lane - 1``; on a fork row a line leaves
    ``lane - 1`` for ``lane``.
    """

    kind: RowKind
    lanes: tuple[bool, ...]
    column: int = -1
    commit: str | None = None
    marks: tuple[tuple[int, str], ...] = ()


def _live(lanes: list[str | None]) -> tuple[bool, ...]:
    return tuple(lane is not None for lane in lanes)


class GraphTooWide(InvalidCommand):
    """Raised by :func:`layout` once its rows hold more than ``max_cells`` lane cells."""


def layout(
    commits: Iterable[tuple[str, Sequence[str]]], max_cells: int | None = None
) -> list[GraphRow]:
    """The rows of ``commits`` ((id, parent ids), newest first).

    With ``max_cells``, raises :class:`GraphTooWide` as soon as the rows drawn so far
    hold more lane cells than that: a wide history costs rows x lanes, so the bound is
    checked while drawing, not after."""
    lanes: list[str | None] = []  # the commit each lane waits for
    rows: list[GraphRow] = []
    drawn = 0  # lane cells in ``rows``

    def add(row: GraphRow) -> None:
        nonlocal drawn
        drawn += len(row.lanes)
        if max_cells is not None and drawn > max_cells:
            raise GraphTooWide(f"the graph holds more than {max_cells:,} lane cells", field="graph")
        rows.append(row)

    for cid, parents in commits:
        if cid not in lanes:
            free = next((i for i, lane in enumerate(lanes) if lane is None), None)
            if free is None:
                lanes.append(cid)
            else:
                lanes[free] = cid
        col = lanes.index(cid)
        joined = [i for i, lane in enumerate(lanes) if lane == cid and i != col]
        if joined:
            # Lines of descent that meet at this commit converge before it.
            for i in joined:
                lanes[i] = None
            add(GraphRow("join", _live(lanes), marks=tuple((i, JOIN) for i in joined)))
        add(GraphRow("commit", _live(lanes), col, cid))
        lanes[col] = parents[0] if parents else None
        for parent in parents[1:]:
            if parent in lanes:
                continue
            lanes.insert(col + 1, parent)
            add(GraphRow("fork", _live(lanes), marks=((col + 1, FORK),)))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return rows


def cells(rows: Sequence[GraphRow]) -> int:
    """How many lane cells ``rows`` hold (what their JSON grows with)."""
    return sum(len(row.lanes) for row in rows)


def rows_json(rows: Sequence[GraphRow]) -> list[dict[str, Any]]:
    """The rows as the API serves them (``GET /v1/models/{m}/log?graph=1``)."""
    return [
        {
            "kind": row.kind,
            "lanes": list(row.lanes),
            "column": row.column,
            "commit": row.commit,
            "marks": [[lane, mark] for lane, mark in row.marks],
        }
        for row in rows
    ]
