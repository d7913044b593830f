"""Generate a realistic event log with the real decide (no shortcuts)."""

from __future__ import annotations

from collections.abc import Iterator

from streams.core import Command, CreateBranch, CreateModel, MakeCommit, Merge, MoveAlias, decide
from streams.core.events import ModelEvent
from streams.core.fold import Fold


def model_history(
    fold: Fold,
    model: str,
    events: int,
    t0: int = 1_700_000_000_000,
    commits: int | None = None,
    merges: bool = True,
) -> Iterator[ModelEvent]:
    """About ``events`` events for one model: commits, a branch, merges, alias moves.

    ``merges=False`` for a long history: deciding a merge walks every ancestor.
    """
    n = 0

    def run(body: object) -> Iterator[ModelEvent]:
        nonlocal n
        n += 1
        command = Command(f"{model}-{n}", model, "bench", t0 + n, body)  # type: ignore[arg-type]
        for event in decide(fold.models.get(model), command):
            fold.apply(event)
            yield event

    yield from run(CreateModel())
    yield from run(MakeCommit("a" * 64, "root", params={"num_leaves": "31"}, metrics={"auc": 0.8}))
    yield from run(CreateBranch("exp"))
    i = 0
    while (len(fold.models[model].commits) < commits) if commits else (n < events):
        i += 1
        branch = "exp" if i % 3 else "main"
        yield from run(
            MakeCommit(
                f"{i % 16:x}" * 64,
                f"c{i}",
                branch=branch,
                params={"num_leaves": str(i % 64)},
                metrics={"auc": 0.8 + (i % 100) / 1000},
            )
        )
        if merges and i % 10 == 0:
            yield from run(Merge("exp", strategy="theirs"))
        if i % 25 == 0:
            yield from run(MoveAlias("production", "main"))
