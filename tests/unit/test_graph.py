"""The one lane layout (streams.core.graph): the terminal's `log --graph` and the console's
drawing come from the same rows, and the terminal still prints what it printed before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from modelvc import render
from streams import queries
from streams.core import graph
from streams.core.errors import InvalidCommand
from streams.core.graph import GraphRow

# What `log --graph` printed before the layout moved to the core: 120 random histories and
# their lines, rendered by modelvc/render.py as of commit 5b362e8 (seeds 0-119, 1-40 commits,
# up to 3 parents, now and then a parent the log does not hold).
GOLDEN = Path(__file__).parent.parent / "golden" / "graph-v1" / "cases.json"


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


@settings(max_examples=400, deadline=None)
@given(dags())
def test_the_layout_has_one_commit_row_per_commit_in_order(commits: list[dict[str, Any]]) -> None:
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


def test_the_terminal_draws_the_rows_exactly_as_it_drew_its_graph_before() -> None:
    cases = json.loads(GOLDEN.read_text())
    assert len(cases) == 120
    for case in cases:
        commits = [_commit(c["id"], c["parents"]) for c in case["commits"]]
        assert render.graph(commits) == case["lines"], case["commits"]


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
