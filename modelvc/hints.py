"""The core's hints in the CLI's own syntax: one table, a renderer per hint code.

The core says what to do next as a code and its arguments
(:class:`streams.core.errors.Hint`); only here does it become a command line,
spelled as ``modelvc/cli.py`` parses it, with the model given through ``-M``.
``tests/unit/test_hints.py`` runs every line this table can produce through
the CLI's parser, so a hint is never a command the CLI refuses.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import Any

from streams.core.errors import Hint, HintCode

# Placeholders the user fills in, as in the CLI's own usage text.
FILE = "FILE"
MESSAGE = "MESSAGE"

Argv = list[str]


def _commit(a: Mapping[str, str]) -> Argv:
    return ["-M", a["model"], "commit", FILE, "--branch", a["branch"], "-m", MESSAGE]


_RENDERERS: Mapping[HintCode, Callable[[Mapping[str, str]], list[Argv]]] = {
    HintCode.CREATE_MODEL: lambda a: [["create", a["model"]]],
    HintCode.CREATE_BRANCH: lambda a: [["-M", a["model"], "branch", "create", a["branch"]]],
    HintCode.COMMIT: lambda a: [_commit(a)],
    HintCode.RETRY_COMMIT: lambda a: [[*_commit(a), "--expect-head", a["expect_head"]]],
    HintCode.LIST_REFS: lambda a: [["-M", a["model"], "refs"]],
    HintCode.SHOW_LOG: lambda a: [["-M", a["model"], "log", a["ref"]]],
    HintCode.MERGE: lambda a: [
        ["-M", a["model"], "merge", a["source"], "--into", a["into"], *choice]
        for choice in (["--strategy", "ours"], ["--strategy", "theirs"], ["--artifact", FILE])
    ],
    HintCode.RETRY_ALIAS: lambda a: [
        ["-M", a["model"], "alias", "set", a["alias"], a["ref"], "--expect", a["expect"]]
    ],
}


def parse(value: Any) -> Hint | None:
    """The hint in an error body from the service, or None when there is none or it is not one.

    The body is data from the network: a code this CLI does not know (a newer
    service) or arguments of the wrong shape give no hint rather than a crash.
    """
    if not isinstance(value, dict):
        return None
    code, args = value.get("code"), value.get("args")
    if not isinstance(code, str) or not isinstance(args, dict):
        return None
    try:
        return Hint(HintCode(code), args)
    except (ValueError, TypeError):
        return None


def argvs(hint: Hint) -> list[Argv]:
    """The command lines (after ``modelvc``) that ``hint`` suggests, alternatives in order.

    None at all when an argument starts with '-': the parser would read it as
    an option, and no valid name or ref does.
    """
    if any(value.startswith("-") for value in hint.args.values()):
        return []
    return _RENDERERS[hint.code](hint.args)


def command_lines(hint: Hint) -> list[str]:
    """``hint`` as shell lines to copy: every argument quoted where the shell would split it."""
    return [shlex.join(["modelvc", *argv]) for argv in argvs(hint)]
