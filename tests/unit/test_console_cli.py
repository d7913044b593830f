"""`modelvc ui --no-browser` against the console's real edge (no broker): it asks for a
login code with the CLI's token and prints the console's address with the code in its
fragment; that code signs a browser in as the token's caller, once. Without
--no-browser the browser is given a private redirect page, never the link itself."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import tempfile
import urllib.parse
import webbrowser
from pathlib import Path

import pytest

from modelvc.cli import EXIT_DENIED, main
from tests.unit.test_console_edge import READER, World, served


def test_ui_prints_a_link_whose_code_signs_in_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELVC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELVC_TOKEN", READER[0])

    async def check(w: World) -> None:
        url = str(w.client.make_url("")).rstrip("/")
        # The CLI is synchronous: it runs in a thread while this loop serves it.
        code = await asyncio.to_thread(main, ["--url", url, "ui", "--no-browser"])
        assert code == 0
        printed = capsys.readouterr().out.strip()
        found = re.fullmatch(re.escape(url) + r"/ui/#code=([A-Za-z0-9_-]{43})", printed)
        assert found, printed
        status, body, _ = await w.sign_in({"code": found[1]})
        assert status == 200 and body["actor"] == "rita", body
        assert (await w.sign_in({"code": found[1]}))[0] == 401
        # --json: the same link, with when its code expires.
        assert await asyncio.to_thread(main, ["--url", url, "--json", "ui", "--no-browser"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["url"].startswith(f"{url}/ui/#code=") and answer["opened"] is False
        assert answer["expires_ms"] == int(w.clock.now * 1000) + 60_000
        # A token the service does not know: refused like every command (exit 5).
        monkeypatch.setenv("MODELVC_TOKEN", "mvc_0123456789abcdef_" + "A" * 43)
        assert await asyncio.to_thread(main, ["--url", url, "ui", "--no-browser"]) == EXIT_DENIED
        assert "not known" in capsys.readouterr().err

    served(tmp_path, check)


def test_ui_opens_the_link_through_a_private_page_not_the_browsers_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELVC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELVC_TOKEN", READER[0])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    asked: list[str] = []

    def browser(address: str) -> bool:  # what a browser's command line would carry
        asked.append(address)
        return True

    monkeypatch.setattr(webbrowser, "open", browser)

    async def check(w: World) -> None:
        url = str(w.client.make_url("")).rstrip("/")
        assert await asyncio.to_thread(main, ["--url", url, "--json", "ui"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["opened"] is True
        code = answer["url"].partition("#code=")[2]
        [address] = asked
        assert address.startswith("file://") and code not in address
        page = Path(urllib.parse.urlparse(address).path)
        assert stat.S_IMODE(page.stat().st_mode) == 0o600
        assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
        text = page.read_text()
        assert f'<meta http-equiv="refresh" content="0;url={answer["url"]}">' in text
        assert f'<a href="{answer["url"]}">' in text and "<script" not in text
        assert (await w.sign_in({"code": code}))[0] == 200

    served(tmp_path, check)
