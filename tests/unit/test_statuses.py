"""HTTP statuses live at the edge: one table covers every code the core and shell raise."""

from __future__ import annotations

from streams.core import errors
from streams.service.writer import UNTRUSTED_WRITER
from streams.statuses import STATUS_BY_CODE, status_of


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


def test_the_core_carries_codes_not_statuses() -> None:
    for cls in {errors.VersionGraphError} | subclasses(errors.VersionGraphError):
        assert not hasattr(cls, "status"), cls
        assert cls.code in STATUS_BY_CODE, f"{cls.__name__}: add {cls.code!r} to the table"


def test_statuses_of_answers() -> None:
    assert status_of({"event": "Committed", "repeated": False}) == 201
    assert status_of({"event": "Committed", "repeated": True}) == 200
    assert status_of(errors.StaleHead("x").to_dict()) == 409
    assert status_of(errors.UnknownModel("x").to_dict()) == 404
    assert status_of(errors.CommandIdReused("x").to_dict()) == 422
    assert status_of({"error": "timeout", "message": "m"}) == 504
    # Who may do what: the writer's refusals of a protected ref are 403, like the edge's.
    assert status_of(errors.Unauthenticated("x").to_dict()) == 401
    assert status_of(errors.Forbidden("x", needed="releaser").to_dict()) == 403
    assert status_of(errors.ActorMismatch("x").to_dict()) == 403
    # A writer whose key the partition's ring does not hold: the operator's to fix.
    assert status_of({"error": UNTRUSTED_WRITER, "message": "m"}) == 503
    # A code this instance does not know (a newer writer's): its status from the wire.
    assert status_of({"error": "from_the_future", "message": "m"}, fallback=418) == 418
    assert status_of({"error": "from_the_future", "message": "m"}) == 500
