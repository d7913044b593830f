"""The one lane layout (streams.core.graph): the terminal's `log --graph` and the console's
drawing come from the same rows, and the terminal still prints what it printed before."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from modelvc import render
from streams import queries
from streams.core import graph
from streams.core.errors import InvalidCommand
from streams.core.graph import GraphRow


# -- the renderer as it was before the layout moved to the core: the oracle ---------------
def _old_lane_row(lanes: list[str | None], marks: dict[int, str]) -> str:
    row = ""
    for i, lane in enumerate(lanes):
        if i in marks:
            row = row[:-1] + marks[i] + " " if row else marks[i] + " "
        else:
            row += ("|" if lane else " ") + " "
    return row.rstrip()


def old_graph(commits: list[dict[str, Any]], label: Any) -> list[str]:
    lanes: list[str | None] = []
    lines: list[str] = []
    for commit in commits:
        cid = commit["id"]
        if cid not in lanes:
            free = next((i for i, lane in enumerate(lanes) if lane is None), None)
            if free is None:
                lanes.append(cid)
            else:
                lanes[free] = cid
        col = lanes.index(cid)
        joined = [i for i, lane in enumerate(lanes) if lane == cid and i != col]
        if joined:
            for i in joined:
                lanes[i] = None
            lines.append(_old_lane_row(lanes, dict.fromkeys(joined, "/")))
        row = ["*" if i == col else ("|" if lane else " ") for i, lane in enumerate(lanes)]
        lines.append(" ".join(row).rstrip() + "  " + label(commit))
        parents = list(commit["parents"])
        lanes[col] = parents[0] if parents else None
        for parent in parents[1:]:
            if parent in lanes:
                continue
            lanes.insert(col + 1, parent)
            lines.append(_old_lane_row(lanes, {col + 1: "\\"}))
        while lanes and lanes[-1] is None:
            lanes.pop()
    return lines


def _commit(cid: str, parents: list[str]) -> dict[str, Any]:
    return {"id": cid, "parents": parents, "refs": [], "message": f"m {cid}", "reachable": True}


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A random history, newest first: each commit's parents are older commits (or, now and
    then, a commit the log does not hold, as a log of one ref cut by as_of may)."""
    n = draw(st.integers(1, 40))
    commits: list[dict[str, Any]] = []
    for i in range(n):
        older = list(range(i))
        count = draw(st.integers(0, min(3, len(older)))) if older else 0
        parents = [f"c{p:03d}" for p in draw(st.permutations(older))[:count]] if older else []
        if draw(st.integers(0, 9)) == 0:
            parents.append(f"gone{i}")
        commits.append(_commit(f"c{i:03d}", parents))
    return commits[::-1]


def _label(commit: dict[str, Any]) -> str:
    return f"{render.short(commit['id'])} {commit['message']}"


@settings(max_examples=400, deadline=None)
@given(dags())
def test_the_layout_has_one_commit_row_per_commit_in_order_and_renders_as_before(
    commits: list[dict[str, Any]],
) -> None:
    rows = graph.layout((c["id"], c["parents"]) for c in commits)
    assert [r.commit for r in rows if r.kind == "commit"] == [c["id"] for c in commits]
    for row in rows:
        if row.kind == "commit":
            assert 0 <= row.column < len(row.lanes) and row.lanes[row.column]
            assert row.marks == ()
        else:
            assert (row.column, row.commit) == (-1, None)
            assert row.marks and all(0 <= lane < len(row.lanes) for lane, _ in row.marks)
            assert {m for _, m in row.marks} == {"/" if row.kind == "join" else "\\"}
    # The terminal's graph is these rows, drawn exactly as the old renderer drew them.
    assert render.graph(commits) == old_graph(commits, _label)


def test_a_history_with_branches_and_merges() -> None:
    # e merges d (a branch off b) into c; d was itself made on top of b.
    commits = [
        _commit("e", ["c", "d"]),
        _commit("d", ["b"]),
        _commit("c", ["b"]),
        _commit("b", ["a"]),
        _commit("a", []),
    ]
    rows = graph.layout((c["id"], c["parents"]) for c in commits)
    assert rows == [
        GraphRow("commit", (True,), 0, "e"),
        GraphRow("fork", (True, True), marks=((1, "\\"),)),
        GraphRow("commit", (True, True), 1, "d"),
        GraphRow("commit", (True, True), 0, "c"),
        GraphRow("join", (True, False), marks=((1, "/"),)),
        GraphRow("commit", (True, False), 0, "b"),
        GraphRow("commit", (True,), 0, "a"),
    ]
    assert [line.split("  ")[0] for line in render.graph(commits)] == [
        "*",
        "|\\",
        "| *",
        "* |",
        "|/",
        "*",
        "*",
    ]
    assert graph.rows_json(rows)[1] == {
        "kind": "fork",
        "lanes": [True, True],
        "column": -1,
        "commit": None,
        "marks": [[1, "\\"]],
    }
    json.dumps(graph.rows_json(rows))  # plain JSON


def test_a_graph_too_wide_to_send_is_refused_with_what_to_ask_instead() -> None:
    # 2,100 branch heads side by side: each row is as wide as all the lanes above it.
    entries = [_commit(f"h{i}", [f"root{i}"]) for i in range(2100)]
    rows = graph.layout((c["id"], c["parents"]) for c in entries)
    assert graph.cells(rows) > queries.MAX_GRAPH_CELLS
    try:
        queries.graph_json("churn", entries)
    except InvalidCommand as exc:
        assert "?ref=main&graph=1" in exc.message and "log --graph main" in exc.message
    else:
        raise AssertionError("a graph over the bound was sent")
