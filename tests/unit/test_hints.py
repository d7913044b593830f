"""Hints: a code and its arguments in the core, a command line the CLI accepts in modelvc."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import pytest

from modelvc import cli, hints
from streams.core.errors import HINT_ARGS, Hint, HintCode, StaleHead

PLAIN = {
    "model": "churn",
    "branch": "exp",
    "ref": "main~2",
    "source": "exp",
    "into": "main",
    "alias": "production",
    "expect_head": "none",
    "expect": "9f" * 32,
}
# Valid names and refs never hold these, but a hint's arguments come back from
# the network: whatever they are, the line quotes them so the shell keeps each whole.
AWKWARD = {key: f"{value} it's $(rm -rf ~) `x` * ü" for key, value in PLAIN.items()}


def _hint(code: HintCode, values: Mapping[str, str]) -> Hint:
    return Hint(code, {key: values[key] for key in HINT_ARGS[code]})


@pytest.mark.parametrize("values", [PLAIN, AWKWARD], ids=["plain", "awkward"])
@pytest.mark.parametrize("code", list(HintCode))
def test_every_hint_renders_to_command_lines_the_cli_parser_accepts(
    code: HintCode, values: Mapping[str, str]
) -> None:
    hint = _hint(code, values)
    lines = hints.command_lines(hint)
    assert lines, f"{code} renders to nothing"
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "modelvc"
        try:
            args = cli.parser().parse_args(words[1:])
        except SystemExit as exc:  # argparse refuses by exiting 2
            pytest.fail(f"the CLI refuses the hint for {code}: {line} (exit {exc.code})")
        # The line says what the hint says: every argument arrives whole, where
        # the command reads it, and the model is always given by -M (or created).
        parsed = set(map(str, vars(args).values()))
        assert set(hint.args.values()) <= parsed, (line, vars(args))
        if code is HintCode.CREATE_MODEL:
            assert args.command == "create" and args.name == hint.args["model"]
        else:
            assert words[1:3] == ["-M", hint.args["model"]] and args.model == hint.args["model"]


def test_the_lines_are_the_commands_a_user_would_type() -> None:
    assert hints.command_lines(_hint(HintCode.CREATE_BRANCH, PLAIN)) == [
        "modelvc -M churn branch create exp"
    ]
    assert hints.command_lines(_hint(HintCode.LIST_REFS, PLAIN)) == ["modelvc -M churn refs"]
    assert hints.command_lines(_hint(HintCode.CREATE_MODEL, PLAIN)) == ["modelvc create churn"]
    assert hints.command_lines(_hint(HintCode.MERGE, PLAIN)) == [
        "modelvc -M churn merge exp --into main --strategy ours",
        "modelvc -M churn merge exp --into main --strategy theirs",
        "modelvc -M churn merge exp --into main --artifact FILE",
    ]
    assert hints.command_lines(_hint(HintCode.SHOW_LOG, PLAIN)) == ["modelvc -M churn log 'main~2'"]


def test_an_argument_the_parser_would_read_as_an_option_gives_no_line() -> None:
    hint = Hint(HintCode.SHOW_LOG, {"model": "churn", "ref": "--help"})
    assert hints.command_lines(hint) == []


def test_a_hint_holds_exactly_the_arguments_of_its_code() -> None:
    with pytest.raises(TypeError):
        Hint(HintCode.LIST_REFS, {})
    with pytest.raises(TypeError):
        Hint(HintCode.LIST_REFS, {"model": "churn", "branch": "exp"})
    with pytest.raises(TypeError):
        Hint(HintCode.LIST_REFS, {"model": 7})  # type: ignore[dict-item]


def test_hints_in_answers_are_read_as_data_and_never_crash_the_cli() -> None:
    body = StaleHead(
        "moved",
        hint=Hint(
            HintCode.RETRY_COMMIT, {"model": "churn", "branch": "main", "expect_head": "none"}
        ),
    ).to_dict()
    parsed = hints.parse(body["hint"])
    assert parsed is not None and hints.command_lines(parsed) == [
        "modelvc -M churn commit FILE --branch main -m MESSAGE --expect-head none"
    ]
    for junk in (
        None,
        "create_model",
        [],
        {"code": "create_model"},
        {"code": "teleport", "args": {"model": "churn"}},  # a newer service's code
        {"code": "create_model", "args": {"model": "churn", "extra": "x"}},
        {"code": "create_model", "args": {"model": ["churn"]}},
        {"code": 3, "args": {}},
        {"code": "create_model", "args": "churn"},
    ):
        assert hints.parse(junk) is None, junk
