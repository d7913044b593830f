"""Ref expressions and names from strangers: bounded, linear, and never changing meaning."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import (
    Command,
    CreateBranch,
    CreateModel,
    MakeCommit,
    ModelEvent,
    MoveAlias,
    decide,
    fold,
    refs,
)
from streams.core.errors import (
    EmptyBranch,
    InvalidCommand,
    UnknownRef,
    VersionGraphError,
)
from streams.core.events import AliasMoved, BranchCreated, Commit, ModelCreated
from streams.core.fold import Fold
from streams.core.state import ModelState
from tests.unit.strategies import steps
from tests.unit.test_properties import play

DIGESTS = [c * 64 for c in "abcd"]


def _history(commits: int = 3) -> tuple[list[ModelEvent], ModelState]:
    """A model `m` with `commits` commits on main; the log and the folded state."""
    live = Fold()
    log: list[ModelEvent] = []

    def run(body: object) -> None:
        command = Command(f"c{len(log)}", "m", "alice", 1_000 + len(log), body)  # type: ignore[arg-type]
        for event in decide(live.models.get("m"), command):
            assert live.apply(event) is None
            log.append(event)

    run(CreateModel())
    for i in range(commits):
        run(MakeCommit(DIGESTS[i % len(DIGESTS)], f"v{i + 1}"))
    return log, live.models["m"]


def _decide(state: ModelState, body: object) -> list[ModelEvent]:
    return decide(state, Command("cx", "m", "alice", 9_999, body))  # type: ignore[arg-type]


def _timed(fn: object, *args: object) -> tuple[float, object]:
    started = time.perf_counter()
    try:
        outcome: object = fn(*args)  # type: ignore[operator]
    except VersionGraphError as exc:
        outcome = exc
    return time.perf_counter() - started, outcome


# -- finding 5: ref expressions are parsed in linear time, with a length limit ----------
def test_finding_5_caret_flood_resolves_in_linear_time() -> None:
    _, state = _history()
    seconds, outcome = _timed(refs.resolve, state, "main" + "^" * 40_000)
    assert seconds < 5  # it took 40 s before (a bound far from both: the machine is shared)
    assert isinstance(outcome, InvalidCommand)
    assert "at most 256 characters" in outcome.message and "main~40" in outcome.message
    assert len(outcome.message) < 300  # the ref is not echoed back whole

    # Within the limit, a flood still answers at once: past the root, said plainly.
    seconds, outcome = _timed(refs.resolve, state, "main" + "^" * 250)
    assert seconds < 5
    assert isinstance(outcome, UnknownRef) and "past the first commit" in outcome.message


def test_finding_5_huge_generation_count_is_refused_not_a_crash() -> None:
    _, state = _history()
    # int() of more than 4,300 digits raises ValueError on Python 3.11 (a 500 before).
    seconds, outcome = _timed(refs.resolve, state, "main~" + "9" * 5_000)
    assert seconds < 5 and isinstance(outcome, InvalidCommand)
    for ref in ("main~" + "9" * 200, "main~99999999999", "main~3", "main~1~1~1", "main^^^"):
        outcome = _timed(refs.resolve, state, ref)[1]
        assert isinstance(outcome, UnknownRef) and "past the first commit" in outcome.message


def test_suffixes_keep_their_meaning() -> None:
    _, state = _history(4)
    history = list(refs.first_parent_history(state, state.branches["main"]))
    assert refs.resolve(state, "main") == history[0]
    assert refs.resolve(state, "main~0") == history[0]
    assert refs.resolve(state, "main~") == refs.resolve(state, "main^") == history[1]
    assert refs.resolve(state, "main~2") == refs.resolve(state, "main^~1") == history[2]
    assert refs.resolve(state, "main~1^~1") == history[3]
    assert refs.resolve(state, history[0][:8] + "~3") == history[3]
    for ref in ("^", "~2", "main~²", "main~-1", ""):
        with pytest.raises(UnknownRef):
            refs.resolve(state, ref)


def test_an_empty_branch_says_how_to_commit_to_it() -> None:
    _, state = _history(0)
    with pytest.raises(EmptyBranch) as caught:
        refs.resolve(state, "main")
    assert "commit to it first" in caught.value.message
    assert caught.value.to_dict()["hint"] == {
        "code": "commit",
        "args": {"model": "m", "branch": "main"},
    }


def test_unknown_refs_hint_at_the_refs_and_the_log_without_cli_syntax() -> None:
    _, state = _history(2)
    for ref, hint in (
        ("nope", {"code": "list_refs", "args": {"model": "m"}}),
        ("~2", {"code": "list_refs", "args": {"model": "m"}}),
        ("main~7", {"code": "show_log", "args": {"model": "m", "ref": "main"}}),
    ):
        with pytest.raises(UnknownRef) as caught:
            refs.resolve(state, ref)
        assert caught.value.to_dict()["hint"] == hint
        assert "modelvc" not in caught.value.message  # the front end spells commands


# -- finding 6: names that change meaning --------------------------------------------------
def test_finding_6_alias_named_like_a_commit_id_is_refused() -> None:
    _, state = _history(2)
    first, second = list(refs.first_parent_history(state, state.branches["main"]))[::-1]
    for name in (first, first[:8], first.upper()):
        with pytest.raises(InvalidCommand) as caught:
            _decide(state, MoveAlias(alias=name, ref=second))
        assert "read as a commit id" in caught.value.message
        assert f"alias-{name}" in caught.value.message  # what to do instead


def test_finding_6_full_commit_id_resolves_to_that_commit() -> None:
    _, state = _history(2)
    first, second = list(refs.first_parent_history(state, state.branches["main"]))[::-1]
    assert refs.resolve(state, first) == first
    # Even on a state that somehow holds names spelled like ids (an old log),
    # the full id wins over a branch and an alias of that spelling.
    shadowed = replace(
        state,
        aliases={**state.aliases, first: second},
        branches={**state.branches, second: first},
    )
    assert refs.resolve(shadowed, first) == first
    assert refs.resolve(shadowed, second) == second
    assert refs.resolve(shadowed, first + "~0") == first


def test_finding_6_eight_hex_branch_name_is_refused() -> None:
    _, state = _history(1)
    for name in ("deadbeef", "cafe", "DEADBEEF", "1234", "0" * 64):
        with pytest.raises(InvalidCommand) as caught:
            _decide(state, CreateBranch(branch=name))
        assert "read as a commit id" in caught.value.message
    with pytest.raises(InvalidCommand):
        decide(None, Command("c0", "m2", "alice", 1, CreateModel(default_branch="c0ffee")))
    # Not every hex-ish name is refused: too short, too long, or with a separator.
    for name in ("abc", "deadbeefx", "release-cafe", "f" * 65, "v1234"):
        (event,) = _decide(state, CreateBranch(branch=name))
        assert isinstance(event.payload, BranchCreated) and event.payload.branch == name
    # Models are not refs: a hex model name shadows nothing.
    assert refs.check_name("model", "cafe") == "cafe"


@pytest.mark.parametrize(
    "name",
    [
        "production\n",
        "main\r",
        "prod\x1b[31m",
        "\u202eevil",
        "a\u200bb",  # zero-width space (a format character)
        "a\u2066b",  # a bidi isolate
        "ｐｒｏｄ",  # fullwidth letters
        "prod uction",
        "",
        "x" * 129,
    ],
)
def test_finding_6_names_with_newlines_controls_or_bidi_are_refused(name: str) -> None:
    _, state = _history(1)
    for kind, body in (
        ("alias", MoveAlias(alias=name, ref="main")),
        ("branch", CreateBranch(branch=name)),
    ):
        with pytest.raises(InvalidCommand) as caught:
            _decide(state, body)
        message = caught.value.message
        assert f"invalid {kind} name" in message
        assert message.isprintable() and len(message) < 250  # quoted escaped and cut
    with pytest.raises(InvalidCommand):
        refs.check_name("model", name)


def test_finding_6_control_characters_are_named_in_the_refusal() -> None:
    with pytest.raises(InvalidCommand) as caught:
        refs.check_name("alias", "production\n")
    assert "control, format and bidi characters" in caught.value.message
    assert "'production\\n'" in caught.value.message


@pytest.mark.parametrize("name", ["deadbeef", "cafe", "production\n", "\u202eprod", "x" * 200])
def test_finding_6_forged_events_with_such_names_are_void(name: str) -> None:
    log, state = _history(2)
    head = state.branches["main"]
    assert head is not None
    (branch,) = _decide(state, CreateBranch(branch="exp"))
    forged_branch = replace(branch, payload=replace(branch.payload, branch=name))
    (alias,) = _decide(state, MoveAlias(alias="production", ref="main"))
    forged_alias = replace(alias, payload=replace(alias.payload, alias=name))
    assert isinstance(forged_alias.payload, AliasMoved)
    for forged in (forged_branch, forged_alias):
        result = fold([*log, forged])
        assert result.voided == 1
        assert name not in result.models["m"].branches and name not in result.models["m"].aliases
    # The honest versions are applied, so it is the name that voids the forged ones.
    assert fold([*log, branch]).voided == 0 and fold([*log, alias]).voided == 0

    created = log[0]
    assert isinstance(created.payload, ModelCreated)
    forged_model = replace(created, payload=replace(created.payload, default_branch=name))
    assert fold([forged_model]).models == {}


def test_finding_6_forged_full_id_alias_is_void_and_resolution_is_unchanged() -> None:
    log, state = _history(2)
    first, second = list(refs.first_parent_history(state, state.branches["main"]))[::-1]
    (alias,) = _decide(state, MoveAlias(alias="production", ref=second))
    forged = replace(alias, payload=replace(alias.payload, alias=first))
    result = fold([*log, forged])
    assert result.voided == 1
    assert refs.resolve(result.models["m"], first) == first


def test_fold_refuses_an_alias_that_shadows_a_branch_and_vice_versa() -> None:
    log, state = _history(1)
    (alias,) = _decide(state, MoveAlias(alias="production", ref="main"))
    assert fold([*log, replace(alias, payload=replace(alias.payload, alias="main"))]).voided == 1
    with_alias = fold([*log, alias]).models["m"]
    (branch,) = decide(with_alias, Command("cy", "m", "alice", 9_999, CreateBranch("exp")))
    forged = replace(branch, payload=replace(branch.payload, branch="production"))
    assert fold([*log, alias, forged]).voided == 1


# -- fuzz: random ref expressions and names -----------------------------------------------
_SUFFIX = st.one_of(
    st.just("^"),
    st.just("~"),
    st.integers(0, 10**12).map(lambda n: f"~{n}"),
    st.text("0123456789", min_size=1, max_size=40).map(lambda d: "~" + d),
)
_NOISE = st.text(
    st.one_of(
        st.sampled_from("^~0123456789abcdef-._/@{}:\n\r\x00\x1b\u202e\u2066\u200b²٣"),
        st.characters(),
    ),
    max_size=300,
)


@st.composite
def _state_and_refs(draw: st.DrawFn) -> tuple[ModelState, list[str]]:
    live, _, _ = play(draw(steps))
    state = live.models["m1"]
    names = [*state.branches, *state.aliases, *state.commits, "main", "production", ""]
    names += [c[: draw(st.integers(1, 64))] for c in state.commits]
    exprs = []
    for _ in range(draw(st.integers(1, 8))):
        base = draw(st.sampled_from(names) | _NOISE)
        tail = "".join(draw(st.lists(_SUFFIX, max_size=12)))
        flood = draw(st.sampled_from(["", "^" * 300, "^" * 40_000, "~" + "9" * 5_000]))
        exprs.append(draw(st.sampled_from([base + tail, base + tail + flood, base])))
    return state, exprs


@settings(max_examples=200, deadline=None)
@given(_state_and_refs())
def test_fuzz_random_ref_expressions_raise_only_graph_errors_quickly(
    case: tuple[ModelState, list[str]],
) -> None:
    state, exprs = case
    for ref in exprs:
        seconds, outcome = _timed(refs.resolve, state, ref)
        assert seconds < 5, f"resolving a {len(ref)}-character ref took {seconds:.2f}s"
        if isinstance(outcome, VersionGraphError):
            assert len(outcome.message) < 600
        else:
            assert isinstance(outcome, str) and outcome in state.commits
            if ref in state.commits:
                assert outcome == ref  # a full id always names itself


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["model", "branch", "alias"]), _NOISE | st.from_regex(r"[\w.-]{1,140}"))
def test_fuzz_random_names_are_checked_by_one_rule(kind: str, name: str) -> None:
    seconds, outcome = _timed(refs.check_name, kind, name)
    assert seconds < 2  # a backtracking pattern takes minutes on these
    if isinstance(outcome, VersionGraphError):
        assert isinstance(outcome, InvalidCommand) and outcome.message.isprintable()
        assert refs.name_problem(kind, name) == outcome.message
        return
    assert outcome == name and refs.name_problem(kind, name) is None
    assert name.isascii() and name.isprintable() and 1 <= len(name) <= 128
    assert "\n" not in name and name[0].isalnum()
    if kind != "model":
        assert not (4 <= len(name) <= 64 and all(c in "0123456789abcdefABCDEF" for c in name))


# -- merge bases: git's best common ancestors -----------------------------------------------
def _graph(parents: list[list[int]]) -> ModelState:
    """A state whose commit i has the commits named by ``parents[i]`` (all earlier) as parents."""
    _, state = _history(0)
    commits = {
        f"c{i}": Commit(f"c{i}", tuple(f"c{p}" for p in ps), DIGESTS[0], {}, {}, "", "a", i)
        for i, ps in enumerate(parents)
    }
    return replace(state, commits=commits)


def _best_by_definition(state: ModelState, a: str, b: str) -> set[str]:
    common = refs.ancestors(state.commits, a) & refs.ancestors(state.commits, b)
    return {
        c
        for c in common
        if not any(c != d and c in refs.ancestors(state.commits, d) for d in common)
    }


@st.composite
def _dags(draw: st.DrawFn) -> ModelState:
    size = draw(st.integers(1, 24))
    parents = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 2)))) if i else []
        for i in range(size)
    ]
    return _graph(parents)


@settings(max_examples=300, deadline=None)
@given(_dags(), st.data())
def test_merge_bases_are_the_best_common_ancestors_whichever_side_asks(
    state: ModelState, data: st.DataObject
) -> None:
    a = data.draw(st.sampled_from(list(state.commits)))
    b = data.draw(st.sampled_from(list(state.commits)))
    bases = refs.merge_bases(state, a, b)
    assert bases == refs.merge_bases(state, b, a)
    assert set(bases) == _best_by_definition(state, a, b) and len(set(bases)) == len(bases)
    order = list(state.commits)
    assert bases == sorted(bases, key=order.index, reverse=True)  # newest first


def test_merge_bases_of_a_criss_cross_and_of_related_commits() -> None:
    # c0 <- c1, c0 <- c2; c3 = merge(c1, c2); c4 = merge(c2, c1): bases of c3 and c4 are c2, c1.
    state = _graph([[], [0], [0], [1, 2], [2, 1], [3]])
    assert refs.merge_bases(state, "c3", "c4") == ["c2", "c1"]
    assert refs.merge_bases(state, "c5", "c4") == ["c2", "c1"]
    assert refs.merge_bases(state, "c1", "c5") == ["c1"]  # an ancestor is its own base
    assert refs.merge_bases(state, "c3", "c3") == ["c3"]
    assert refs.merge_bases(_graph([[], []]), "c0", "c1") == []  # two roots


def test_merge_bases_take_linear_time_on_a_long_history() -> None:
    # 40,000 commits on one line, then two tips: every commit is a common ancestor.
    # Asking each of them for its ancestors would be quadratic (hours); one walk
    # below them all takes milliseconds.
    # Counted, not timed (the machine is shared): the commits it looks up.
    n = 40_000
    state = _graph([[i - 1] if i else [] for i in range(n)] + [[n - 1], [n - 1]])
    looked_up = [0]

    class Counted(dict[str, Commit]):
        def __getitem__(self, key: str) -> Commit:
            looked_up[0] += 1
            return super().__getitem__(key)

    counted = replace(state, commits=Counted(state.commits))
    assert refs.merge_bases(counted, f"c{n}", f"c{n + 1}") == [f"c{n - 1}"]
    assert looked_up[0] <= 6 * (n + 2), looked_up[0]  # 4n now: two ancestor walks, one below
