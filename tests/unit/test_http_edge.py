"""The same-origin rule of the HTTP edge, on the Origin values a forger would try."""

from __future__ import annotations

import pytest

from streams.http_edge import same_origin


@pytest.mark.parametrize(
    ("origin", "same"),
    [
        ("http://127.0.0.1:6066", True),
        ("http://127.0.0.1:6066/", True),
        ("http://evil.example@127.0.0.1:6066", False),  # user info: forged by hand
        ("http://u:p@127.0.0.1:6066", False),
        ("http://127.0.0.1:6066?x=1", False),
        ("http://127.0.0.1:6066#x", False),
        ("http://127.0.0.1:6067", False),
        ("http://localhost.evil.example:6066", False),
        ("null", False),
        ("file://", False),
        ("", False),
    ],
)
def test_only_this_servers_own_origin_is_same_origin(origin: str, same: bool) -> None:
    assert same_origin(origin, "127.0.0.1:6066") is same
