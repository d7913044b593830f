"""HTTP statuses live at the edge: one table covers every code the core and shell raise."""

from __future__ import annotations

import errno
import json

import pytest

from streams.api import domain_error
from streams.core import errors
from streams.errors import ArtifactStoreRefused, ArtifactStoreUnavailable
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


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        # A store directory full or read-only: the operator frees space or fixes it.
        (ArtifactStoreUnavailable(errno.ENOSPC, "free space in /srv/a"), "store_full", 507),
        (ArtifactStoreUnavailable(errno.EROFS, "mount /srv/a read-write"), "store_full", 507),
        (ArtifactStoreUnavailable(errno.EACCES, "chmod /srv/a"), "store_full", 507),
        # Credentials the store refuses (an S3 403) are no full disk: 503, whatever the errno.
        (ArtifactStoreRefused(errno.EACCES, "credentials refused by s3"), "store_refused", 503),
        (ArtifactStoreRefused(0, "credentials refused by s3"), "store_refused", 503),
        # A store that does not answer, or not in time: it may come back.
        (
            ArtifactStoreUnavailable(errno.EHOSTUNREACH, "check the endpoint"),
            "store_unreachable",
            503,
        ),
        (ArtifactStoreUnavailable(errno.ETIMEDOUT, "no answer in 30 s"), "store_unreachable", 503),
        (ArtifactStoreUnavailable("no errno at all"), "store_unreachable", 503),
    ],
)
def test_a_store_fault_answers_its_codes_status_and_its_own_words(
    fault: ArtifactStoreUnavailable, code: str, status: int
) -> None:
    answer = domain_error(fault)
    assert answer is not None
    body = json.loads(answer.text or "")
    assert (body["error"], answer.status) == (code, status)
    assert STATUS_BY_CODE[code] == status  # the table's, not one set beside it
    assert body["message"] == (fault.strerror or str(fault))
    assert "[Errno" not in body["message"]
    # A store that does not answer says when to try again; the operator's faults do not.
    assert ("Retry-After" in answer.headers) == (code == "store_unreachable")
