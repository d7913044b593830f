"""Hypothesis strategies: random command sequences against random models."""

from __future__ import annotations

from hypothesis import strategies as st

from streams.core import (
    CreateBranch,
    CreateModel,
    DeleteBranch,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
)

MODELS = ["m1", "m2"]
BRANCHES = ["main", "exp", "hotfix"]
REFS = ["main", "exp", "hotfix", "main~1", "exp~1", "production", "main^", "staging"]
DIGESTS = [c * 64 for c in "abcdef"]

commits = st.builds(
    MakeCommit,
    artifact_sha256=st.sampled_from(DIGESTS),
    message=st.sampled_from(["a", "b", "c"]),
    branch=st.sampled_from(["main", "main", *BRANCHES]),
    params=st.dictionaries(
        st.sampled_from(["lr", "leaves"]), st.sampled_from(["1", "2"]), max_size=2
    ),
    metrics=st.dictionaries(st.sampled_from(["auc"]), st.floats(0, 1), max_size=1),
    expect_head=st.sampled_from([None, None, None, "main", "main~1", "exp"]),
)

bodies = st.one_of(
    st.just(CreateModel()),
    commits,
    commits,
    commits,
    st.builds(
        CreateBranch, branch=st.sampled_from(BRANCHES), from_ref=st.none() | st.sampled_from(REFS)
    ),
    st.builds(DeleteBranch, branch=st.sampled_from(BRANCHES)),
    st.builds(
        Merge,
        source=st.sampled_from(REFS),
        target=st.sampled_from(BRANCHES),
        strategy=st.none() | st.sampled_from(["theirs", "ours"]),
    ),
    st.builds(
        Rollback,
        branch=st.sampled_from(BRANCHES),
        to_ref=st.sampled_from(REFS),
        reason=st.just("r"),
    ),
    st.builds(
        MoveAlias,
        alias=st.sampled_from(["production", "staging"]),
        ref=st.sampled_from(REFS),
        expect=st.none() | st.sampled_from(REFS),
    ),
)

# (model, body, repeat-an-earlier-command-id?)
steps = st.lists(
    st.tuples(st.sampled_from(MODELS), bodies, st.sampled_from([False] * 9 + [True])),
    min_size=15,
    max_size=80,
).map(lambda s: [(m, CreateModel(), False) for m in MODELS] + s)
