"""What a command gets back: a receipt, or an error body. Never an HTTP status.

The HTTP edge chooses the status from the body (``streams.statuses``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.core.errors import VersionGraphError
from streams.core.state import Receipt


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    # The status another instance put on the replies topic with this answer: used only
    # for an error code this instance's table does not know (a newer writer's).
    wire_status: int | None = None

    @property
    def ok(self) -> bool:
        return "error" not in self.body


def refused(exc: VersionGraphError, **extra: Any) -> Answer:
    return Answer(exc.to_dict() | extra)


def receipt_body(
    model: str,
    receipt: Receipt,
    command_id: str,
    partition: int,
    offset: int,
    repeated: bool,
) -> dict[str, Any]:
    return {
        "model": model,
        "command_id": command_id,
        "event": receipt.event,
        "seq": receipt.seq,
        "ref": receipt.ref,
        "head": receipt.head,
        "partition": partition,
        "offset": offset,
        "repeated": repeated,
    }
