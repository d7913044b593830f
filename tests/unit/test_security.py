"""Who may do what, and which keys vouch for the log: the pure rules of issue 10.

The verifier is the injected collaborator (an HMAC stand-in, tests/unit/fakekeys.py);
what is under test is the core's use of it: which events need a signature, by
which key, and what the fold, decide and the auditor do when one is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from streams.core.audit import VIOLATIONS, Auditor, Where
from streams.core.commands import (
    AddWriterKey,
    Body,
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    IssueToken,
    MakeCommit,
    Merge,
    MoveAlias,
    ProtectRef,
    RetireWriterKey,
    RevokeToken,
    Rollback,
    UnprotectRef,
)
from streams.core.decide import decide, decide_on
from streams.core.errors import Forbidden, InvalidCommand, NothingToDo, Unauthenticated
from streams.core.events import ModelEvent, WriterKeyAdded, WriterKeyRetired
from streams.core.fold import Fold, fold, state_digest
from streams.core.security import (
    ROLES,
    SECURITY_STREAM,
    WRITER_ACTOR,
    SecurityState,
    at_least,
    authenticate,
    authorize,
    protection,
    required_role,
    token_sha256,
)
from streams.core.signatures import (
    KeyRing,
    command_message,
    is_system_stream,
    keys_partition,
    keys_stream,
    signature_problem,
)
from tests.unit.fakekeys import FakeKey, fake_verify

A, B, C = FakeKey.named("a"), FakeKey.named("b"), FakeKey.named("c")
TOKEN_ID = "0123456789abcdef"
TOKEN = f"mvc_{TOKEN_ID}_" + "x" * 43
ARTIFACT = "a" * 64


class Log:
    """A log written the way the writer writes it: decide, stamp the key, sign, fold."""

    def __init__(self, fold_: Fold | None = None) -> None:
        self.fold = fold_ if fold_ is not None else Fold(verify=fake_verify)
        self.events: list[tuple[ModelEvent, int]] = []
        self.n = 0

    def run(
        self,
        model: str,
        body: Body,
        key: FakeKey | None = A,
        partition: int = 0,
        actor: str = "ann",
    ) -> list[ModelEvent]:
        self.n += 1
        command = Command(f"c{self.n}", model, actor, 1000 + self.n, body)
        made = []
        for event in decide_on(self.fold, partition, command, key.key_id if key else ""):
            signed = key.signed(event) if key else event
            assert self.fold.apply(signed, partition) is None
            self.events.append((signed, partition))
            made.append(signed)
        return made

    def signed_partition(self, partition: int = 0, key: FakeKey = A) -> Log:
        self.run(keys_stream(partition), AddWriterKey(key.public_key, "first"), key, partition)
        return self

    def model(self, name: str = "churn", key: FakeKey | None = A) -> Log:
        self.run(name, CreateModel(), key)
        self.run(name, MakeCommit(ARTIFACT, "first"), key)
        return self

    def next_event(self, body: Body, model: str = "churn", key_id: str = "") -> ModelEvent:
        """The event ``body`` would make now, unsigned and not applied (a forger's)."""
        state = self.fold.chain(model)
        (event,) = decide(state, Command("forged", model, "mallory", 99_999, body), key_id)
        return event


def test_the_stream_names_are_fullmatched() -> None:
    assert keys_stream(3) == "~keys.3" and keys_partition("~keys.3") == 3
    for hostile in ("~keys.3\n", "~keys.03", "~keys.-1", "~keys.10000", "~keys.", "~KEYS.1"):
        assert keys_partition(hostile) is None and not is_system_stream(hostile)
    assert is_system_stream(SECURITY_STREAM) and not is_system_stream("~security\n")


def test_roles_are_ordered_and_an_unknown_role_includes_nothing() -> None:
    assert [at_least(role, "releaser") for role in ROLES] == [False, False, True, True]
    assert not at_least("root", "reader") and not at_least("", "reader")
    assert not at_least("admin", "root")


# -- authentication ------------------------------------------------------------------


def issued(expires_at: int = 0, actor: str = "bob", role: str = "releaser") -> Log:
    log = Log().signed_partition()
    body = IssueToken(TOKEN_ID, actor, role, token_sha256(TOKEN), expires_at)
    log.run(SECURITY_STREAM, body)
    return log


def test_a_token_authenticates_as_the_identity_it_was_issued_to() -> None:
    identity = authenticate(issued().fold.security, TOKEN, 5_000)
    assert (identity.actor, identity.role, identity.token_id, identity.expires_at) == (
        "bob",
        "releaser",
        TOKEN_ID,
        0,
    )


@pytest.mark.parametrize(
    "token",
    [
        "",
        TOKEN + "\n",  # fullmatch: a trailing newline is not the token
        " " + TOKEN,
        TOKEN.upper(),
        TOKEN[:-1],
        TOKEN + "x" * 10_000,
        f"mvc_{TOKEN_ID}_" + "x" * 42 + "!",
    ],
)
def test_a_malformed_token_is_refused_and_never_echoed(token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        authenticate(issued().fold.security, token, 5_000)
    assert "not a modelvc token" in refused.value.message
    assert "x" * 20 not in refused.value.message
    assert "modelvc token create" in refused.value.message


def test_a_known_token_id_with_another_secret_is_refused() -> None:
    other = f"mvc_{TOKEN_ID}_" + "y" * 43
    with pytest.raises(Unauthenticated, match="not known"):
        authenticate(issued().fold.security, other, 5_000)
    with pytest.raises(Unauthenticated, match="not known"):
        authenticate(None, TOKEN, 5_000)


def test_a_revoked_token_is_refused_and_says_how_to_get_a_new_one() -> None:
    log = issued()
    log.run(SECURITY_STREAM, RevokeToken(TOKEN_ID, "left the team"))
    with pytest.raises(Unauthenticated) as refused:
        authenticate(log.fold.security, TOKEN, 5_000)
    assert "revoked (left the team)" in refused.value.message
    assert "modelvc token create bob --role releaser" in refused.value.message
    assert TOKEN not in refused.value.message


def test_an_expired_token_is_refused_from_its_expiry_on() -> None:
    security = issued(expires_at=10_000).fold.security
    assert authenticate(security, TOKEN, 9_999).actor == "bob"
    with pytest.raises(Unauthenticated, match="expired"):
        authenticate(security, TOKEN, 10_000)


# -- authorization ---------------------------------------------------------------------

PROTECTED_ALIAS = ProtectRef("alias", "production", "churn", "releaser")
PROTECTED_BRANCH = ProtectRef("branch", "main", "", "releaser")
# (body, needed unprotected, needed with the rules above)
TABLE: list[tuple[Body, str, str]] = [
    (CreateModel(), "committer", "committer"),
    (MakeCommit(ARTIFACT, "m"), "committer", "releaser"),
    (MakeCommit(ARTIFACT, "m", branch="exp"), "committer", "committer"),
    (Merge("exp"), "committer", "releaser"),
    (Merge("main", target="exp"), "committer", "committer"),
    (Rollback("main", "x", "r"), "committer", "releaser"),
    (MoveAlias("production", "main"), "committer", "releaser"),
    (MoveAlias("staging", "main"), "committer", "committer"),
    (CreateBranch("main"), "committer", "releaser"),
    (DeleteBranch("exp"), "committer", "committer"),
    (DeleteBranch("main"), "committer", "admin"),
    (IssueToken(TOKEN_ID, "bob", "reader", "0" * 64), "admin", "admin"),
    (RevokeToken(TOKEN_ID, ""), "admin", "admin"),
    (ProtectRef("alias", "x"), "admin", "admin"),
    (UnprotectRef("alias", "x"), "admin", "admin"),
    (AddWriterKey(A.public_key), "admin", "admin"),
    (RetireWriterKey(A.key_id, ""), "admin", "admin"),
]


def protected() -> SecurityState:
    log = Log().signed_partition()
    log.run(SECURITY_STREAM, PROTECTED_ALIAS)
    log.run(SECURITY_STREAM, PROTECTED_BRANCH)
    assert log.fold.security is not None
    return log.fold.security


@pytest.mark.parametrize(("body", "unprotected", "needed"), TABLE)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_exactly_what_its_row_says(
    body: Body, unprotected: str, needed: str, role: str
) -> None:
    for security, least in ((None, unprotected), (protected(), needed)):
        command = Command("c", "churn", "bob", 1, body, role=role)
        assert required_role(security, None, command)[0] == least
        if at_least(role, least):
            authorize(security, None, command)
        else:
            with pytest.raises(Forbidden) as refused:
                authorize(security, None, command)
            details = refused.value.details
            assert (details["needed"], details["role"], details["actor"]) == (least, role, "bob")
            assert f"modelvc token create bob --role {least}" in refused.value.message


def test_a_command_without_an_authenticated_role_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="no role"):
        authorize(None, None, Command("c", "churn", "bob", 1, CreateModel()))


def test_protection_is_the_highest_of_the_model_rule_and_the_every_model_rule() -> None:
    log = Log().signed_partition()
    log.run(SECURITY_STREAM, ProtectRef("alias", "production", "", "releaser"))
    assert protection(log.fold.security, "churn", "alias", "production") == "releaser"
    log.run(SECURITY_STREAM, ProtectRef("alias", "production", "churn", "admin"))
    assert protection(log.fold.security, "churn", "alias", "production") == "admin"
    assert protection(log.fold.security, "other", "alias", "production") == "releaser"
    assert protection(log.fold.security, "churn", "branch", "production") is None
    log.run(SECURITY_STREAM, UnprotectRef("alias", "production", "churn"))
    assert protection(log.fold.security, "churn", "alias", "production") == "releaser"


def test_a_token_above_the_issuers_role_is_forbidden() -> None:
    # admin is the top role today, so only an admin issues; a releaser cannot hand
    # out even a reader token, let alone its own role.
    for asked in ROLES:
        body = IssueToken(TOKEN_ID, "eve", asked, "0" * 64)
        with pytest.raises(Forbidden):
            authorize(None, None, Command("c", SECURITY_STREAM, "rel", 1, body, role="releaser"))
        authorize(None, None, Command("c", SECURITY_STREAM, "adm", 1, body, role="admin"))


# -- deciding the security chain ---------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        IssueToken("0123456789ABCDEF", "bob", "reader", "0" * 64),
        IssueToken(TOKEN_ID + "\n", "bob", "reader", "0" * 64),
        IssueToken(TOKEN_ID, "bob\n", "reader", "0" * 64),
        IssueToken(TOKEN_ID, "~admin", "reader", "0" * 64),
        IssueToken(TOKEN_ID, "bob", "root", "0" * 64),
        IssueToken(TOKEN_ID, "bob", "reader", "0" * 63),
        IssueToken(TOKEN_ID, "bob", "reader", "0" * 64, expires_at=-1),
        IssueToken(TOKEN_ID, "bob", "reader", "0" * 64, expires_at=500),  # before it is issued
        ProtectRef("tag", "production"),
        ProtectRef("alias", "production\n"),
        ProtectRef("alias", "deadbeef"),  # would read as a commit id
        ProtectRef("alias", "production", model="~security"),
        ProtectRef("alias", "production", role="reader"),
        ProtectRef("alias", "production", role="owner"),
        RevokeToken("ffffffffffffffff", "unknown"),
        RevokeToken(TOKEN_ID, "x" * 5000),
    ],
)
def test_a_malformed_security_command_is_refused(body: Body) -> None:
    log = issued()
    with pytest.raises(InvalidCommand):
        decide(log.fold.security, Command("new", SECURITY_STREAM, "adm", 1000, body))


def test_a_token_id_is_never_reused_even_after_revocation() -> None:
    log = issued()
    log.run(SECURITY_STREAM, RevokeToken(TOKEN_ID, ""))
    body = IssueToken(TOKEN_ID, "bob", "reader", "1" * 64)
    with pytest.raises(InvalidCommand, match="already used"):
        decide(log.fold.security, Command("again", SECURITY_STREAM, "adm", 5000, body))
    with pytest.raises(NothingToDo):
        decide(
            log.fold.security,
            Command("twice", SECURITY_STREAM, "adm", 5000, RevokeToken(TOKEN_ID, "")),
        )


ADMIN_ID = "aaaaaaaaaaaaaaaa"


def test_the_last_active_admin_token_cannot_be_revoked() -> None:
    # Only an admin issues tokens: revoking the last one would leave nobody to do so.
    log = issued(role="admin")
    revoke = Command("r", SECURITY_STREAM, "ann", 5000, RevokeToken(TOKEN_ID, "oops"))
    with pytest.raises(InvalidCommand) as refused:
        decide(log.fold.security, revoke)
    assert "modelvc token create NAME --role admin" in refused.value.message
    # An admin that will have expired by then does not count ...
    log.run(SECURITY_STREAM, IssueToken(ADMIN_ID, "cat", "admin", "1" * 64, expires_at=4000))
    with pytest.raises(InvalidCommand, match="last active admin"):
        decide(log.fold.security, revoke)
    # ... an active one does; and a non-admin token is always revocable.
    log.run(SECURITY_STREAM, IssueToken("bbbbbbbbbbbbbbbb", "dan", "admin", "2" * 64))
    assert decide(log.fold.security, revoke)
    reader = issued(role="reader")
    assert decide(reader.fold.security, revoke)


def test_no_token_may_name_the_stream_writer() -> None:
    body = IssueToken(ADMIN_ID, WRITER_ACTOR, "reader", "0" * 64)
    with pytest.raises(InvalidCommand, match="reserved"):
        decide(None, Command("w", SECURITY_STREAM, "ann", 1, body))
    # A forged record is void too, so a person never reads as the writer in the log.
    log = Log().signed_partition()
    (forged,) = decide(
        None, Command("w", SECURITY_STREAM, "ann", 1, replace(body, actor="bob")), A.key_id
    )
    forged = replace(forged, payload=replace(forged.payload, actor=WRITER_ACTOR))
    assert "reserved" in (log.fold.apply(A.signed(forged), 0) or "")
    assert log.fold.security is None


def test_protecting_twice_or_unprotecting_what_is_open_is_nothing_to_do() -> None:
    log = Log().signed_partition()
    log.run(SECURITY_STREAM, PROTECTED_ALIAS)
    with pytest.raises(NothingToDo):
        decide(log.fold.security, Command("again", SECURITY_STREAM, "a", 1, PROTECTED_ALIAS))
    with pytest.raises(NothingToDo):
        decide(
            log.fold.security,
            Command("u", SECURITY_STREAM, "a", 1, UnprotectRef("alias", "production")),
        )
    raised = replace(PROTECTED_ALIAS, role="admin")  # changing a rule's role is a new rule
    assert decide(log.fold.security, Command("r", SECURITY_STREAM, "a", 1, raised))


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (SECURITY_STREAM, MakeCommit(ARTIFACT, "m")),
        (SECURITY_STREAM, AddWriterKey(A.public_key)),
        (keys_stream(0), IssueToken(TOKEN_ID, "bob", "reader", "0" * 64)),
        (keys_stream(0), CreateModel()),
        ("churn", IssueToken(TOKEN_ID, "bob", "reader", "0" * 64)),
        ("churn", AddWriterKey(A.public_key)),
        ("~other", CreateModel()),
    ],
)
def test_a_command_sent_to_the_wrong_kind_of_chain_is_refused(model: str, body: Body) -> None:
    with pytest.raises(InvalidCommand):
        decide(None, Command("c", model, "a", 1, body), A.key_id)


def test_a_repeated_system_command_is_answered_with_nothing_new() -> None:
    log = issued()
    body = IssueToken(TOKEN_ID, "bob", "releaser", token_sha256(TOKEN), 0)
    # c1 introduced the key; c2 issued the token
    assert decide(log.fold.security, Command("c2", SECURITY_STREAM, "ann", 1002, body)) == ()


def test_decide_stamps_the_signing_key_and_the_chain_hash_covers_it() -> None:
    command = Command("c", "churn", "ann", 1, CreateModel())
    (plain,) = decide(None, command)
    (stamped,) = decide(None, command, A.key_id)
    assert plain.key_id == "" and stamped.key_id == A.key_id
    assert plain.hash() != stamped.hash()
    assert replace(stamped, signature=b"x" * 64).hash() == stamped.hash()  # never hashed
    assert stamped.to_plain()["key_id"] == A.key_id and "key_id" not in plain.to_plain()


def test_the_command_message_covers_who_what_and_when() -> None:
    base = Command("c", "churn", "bob", 1, MoveAlias("production", "main"), role="releaser")
    message = command_message(base)
    assert message.startswith(b"modelvc command v1\x00") and len(message) == 19 + 32
    changed = [
        replace(base, command_id="d"),
        replace(base, model="other"),
        replace(base, actor="eve"),
        replace(base, role="admin"),
        replace(base, at=2),
        replace(base, body=MoveAlias("production", "exp")),
    ]
    assert all(command_message(c) != message for c in changed)
    assert command_message(replace(base, signature=b"s", key_id="k")) == message


# -- deciding key rings ---------------------------------------------------------------


def test_the_first_key_of_a_partition_must_be_added_by_itself() -> None:
    for signer in ("", B.key_id):
        command = Command("k", keys_stream(0), "ann", 1, AddWriterKey(A.public_key))
        with pytest.raises(InvalidCommand, match="added by itself"):
            decide(None, command, signer)
    (event,) = decide(
        None, Command("k", keys_stream(0), "ann", 1, AddWriterKey(A.public_key)), A.key_id
    )
    assert event.payload == WriterKeyAdded(A.key_id, A.public_key, "")


@pytest.mark.parametrize(
    "public_key", [A.public_key.upper(), A.public_key[:-1], A.public_key + "\n"]
)
def test_a_malformed_public_key_is_refused(public_key: str) -> None:
    command = Command("k", keys_stream(0), "ann", 1, AddWriterKey(public_key))
    with pytest.raises(InvalidCommand, match="64 lowercase hex"):
        decide(None, command, A.key_id)


def test_a_later_key_needs_an_active_signer_and_a_retired_key_never_returns() -> None:
    log = Log().signed_partition()
    ring = log.fold.rings[0]
    with pytest.raises(InvalidCommand, match="modelvc key add"):
        decide(ring, Command("k2", keys_stream(0), "ann", 1, AddWriterKey(B.public_key)), B.key_id)
    log.run(keys_stream(0), AddWriterKey(B.public_key), A)
    log.run(keys_stream(0), RetireWriterKey(A.key_id, "rotated"), B)
    ring = log.fold.rings[0]
    assert dict(ring.active) == {B.key_id: B.public_key}
    assert dict(ring.retired) == {A.key_id: A.public_key}
    with pytest.raises(InvalidCommand, match="never returns"):
        decide(ring, Command("k4", keys_stream(0), "ann", 1, AddWriterKey(A.public_key)), B.key_id)
    with pytest.raises(InvalidCommand, match="not an active key"):
        decide(ring, Command("k5", keys_stream(0), "ann", 1, AddWriterKey(C.public_key)), A.key_id)


def test_retiring_the_last_key_or_the_signers_own_key_is_refused() -> None:
    log = Log().signed_partition()
    retire_a = Command("r", keys_stream(0), "ann", 1, RetireWriterKey(A.key_id, "x"))
    with pytest.raises(InvalidCommand, match="last active key"):
        decide(log.fold.rings[0], retire_a, A.key_id)
    log.run(keys_stream(0), AddWriterKey(B.public_key), A)
    with pytest.raises(InvalidCommand, match="signs this very event"):
        decide(log.fold.rings[0], retire_a, A.key_id)
    log.run(keys_stream(0), RetireWriterKey(A.key_id, "x"), B)
    retire_b = Command("r2", keys_stream(0), "ann", 1, RetireWriterKey(B.key_id, "x"))
    with pytest.raises(InvalidCommand, match="last active key"):
        decide(log.fold.rings[0], retire_b, B.key_id)
    with pytest.raises(InvalidCommand, match="not an active key"):
        decide(log.fold.rings[0], retire_a, B.key_id)


def test_the_fold_voids_a_retirement_decide_would_refuse() -> None:
    # A forged ring event signed by the ring's own key: the same rules, applied on read.
    log = Log().signed_partition()
    ring = log.fold.rings[0]
    last = ModelEvent(
        keys_stream(0),
        2,
        ring.last_hash,
        "r",
        "a",
        1,
        WriterKeyRetired(A.key_id, ""),
        key_id=A.key_id,
    )
    assert "last active key" in (log.fold.apply(A.signed(last), 0) or "")
    log.run(keys_stream(0), AddWriterKey(B.public_key), A)
    own = replace(last, seq=3, prev_hash=log.fold.rings[0].last_hash)
    assert "signs this very event" in (log.fold.apply(A.signed(own), 0) or "")
    back = ModelEvent(
        keys_stream(0),
        3,
        log.fold.rings[0].last_hash,
        "b",
        "a",
        1,
        WriterKeyAdded(A.key_id, A.public_key, ""),
        key_id=B.key_id,
    )
    assert "already active" in (log.fold.apply(B.signed(back), 0) or "")
    assert dict(log.fold.rings[0].active) == {A.key_id: A.public_key, B.key_id: B.public_key}


def test_a_key_ring_command_for_another_partition_is_refused() -> None:
    command = Command("k", keys_stream(1), "ann", 1, AddWriterKey(A.public_key))
    with pytest.raises(InvalidCommand, match="partition 1"):
        decide_on(Fold(), 0, command, A.key_id)
    assert decide_on(Fold(), 1, command, A.key_id)


# -- folding -------------------------------------------------------------------------


def test_system_chains_fold_into_their_own_state_never_into_models() -> None:
    log = issued().model()
    log.run(SECURITY_STREAM, PROTECTED_ALIAS)
    assert sorted(log.fold.models) == ["churn"]
    assert log.fold.security is not None and log.fold.security.seq == 2
    assert log.fold.security.rules == {("alias", "churn", "production"): "releaser"}
    assert log.fold.rings[0].seq == 1 and log.fold.voided == 0
    token = log.fold.security.tokens[TOKEN_ID]
    assert (token.issued_by, token.issued_at, token.revoked_at) == ("ann", 1002, None)


def test_legacy_events_before_signing_began_still_fold() -> None:
    log = Log().model(key=None).signed_partition()
    log.run("churn", MoveAlias("production", "main"))
    assert log.fold.models["churn"].seq == 3 and log.fold.voided == 0
    replayed = Fold(verify=fake_verify)
    assert all(replayed.apply(e, p) is None for e, p in log.events)
    assert state_digest(replayed.models) == state_digest(log.fold.models)


def forged_after_signing(key: FakeKey | None, key_id: str = "") -> tuple[Log, ModelEvent]:
    log = Log().signed_partition().model()
    event = log.next_event(MoveAlias("production", "main"), key_id=key_id)
    return log, (key.signed(event) if key else event)


def test_an_unsigned_event_after_signing_began_is_void() -> None:
    log, forged = forged_after_signing(None)
    assert (log.fold.apply(forged, 0) or "").startswith("unsigned: ")
    assert "production" not in log.fold.models["churn"].aliases
    assert log.fold.void_reasons == {"churn": 1}


@pytest.mark.parametrize(
    ("signer", "key_id", "why"),
    [
        (B, B.key_id, "unknown key"),  # a key the ring never had
        (B, A.key_id, "does not verify"),  # claims the ring's key
        (None, A.key_id, "no signature"),
    ],
)
def test_a_badly_signed_event_is_void(signer: FakeKey | None, key_id: str, why: str) -> None:
    log, forged = forged_after_signing(signer, key_id)
    if signer is None:
        forged = replace(forged, signature=b"")
    reason = log.fold.apply(forged, 0) or ""
    assert why in reason and reason.split(":")[0] in ("bad signature", "unsigned")


def test_a_signature_of_the_wrong_length_is_void_without_asking_the_verifier() -> None:
    calls: list[int] = []

    def counting(public_key: str, message: bytes, signature: bytes) -> bool:
        calls.append(1)
        return fake_verify(public_key, message, signature)

    log = Log(Fold(verify=counting)).signed_partition().model()
    calls.clear()
    forged = log.next_event(MoveAlias("production", "main"), key_id=A.key_id)
    forged = replace(forged, signature=A.sign(b"x") * 100)
    assert (log.fold.apply(forged, 0) or "").startswith("bad signature: ")
    assert calls == []


def test_each_event_on_a_signed_partition_is_verified_once() -> None:
    calls: list[str] = []

    def counting(public_key: str, message: bytes, signature: bytes) -> bool:
        calls.append(public_key)
        return fake_verify(public_key, message, signature)

    log = Log(Fold(verify=counting)).signed_partition().model()
    calls.clear()
    log.run("churn", MoveAlias("production", "main"))
    assert calls == [A.public_key]
    auditor = Auditor(fold=Fold(verify=counting))
    calls.clear()
    for offset, (event, partition) in enumerate(log.events):
        assert auditor.check(event, Where("t", partition, offset)) is None
    assert len(calls) == len(log.events)


def test_a_signed_partition_without_a_verifier_voids_everything_after_its_key() -> None:
    log = Log().signed_partition().model()
    blind = Fold()
    reasons = [blind.apply(e, p) for e, p in log.events]
    assert reasons[0] is None and all("no verifier" in (r or "") for r in reasons[1:])
    assert blind.models == {}


def test_a_signature_by_a_retired_key_is_void() -> None:
    log = Log().signed_partition()
    log.run(keys_stream(0), AddWriterKey(B.public_key), A)
    log.run(keys_stream(0), RetireWriterKey(A.key_id, "leaked"), B)
    log.model(key=B)
    replayed = A.signed(log.next_event(MoveAlias("production", "main"), key_id=A.key_id))
    assert "a retired key" in (log.fold.apply(replayed, 0) or "")


def test_a_first_key_outside_the_pinned_keys_is_an_untrusted_key() -> None:
    log = Log().signed_partition(key=A).model()
    pinned = Fold(verify=fake_verify, trusted=frozenset({B.key_id}))
    first, partition = log.events[0]
    assert (pinned.apply(first, partition) or "").startswith("untrusted key: ")
    assert pinned.rings == {}
    # ... and what that key signed is not legacy history: it is signed, with no key here.
    assert all("ring does not hold" in (pinned.apply(e, p) or "") for e, p in log.events[1:])
    assert pinned.models == {} and pinned.rings == {}
    trusting = Fold(verify=fake_verify, trusted=frozenset({A.key_id}))
    assert all(trusting.apply(e, p) is None for e, p in log.events)


def test_an_untrusted_first_key_does_not_lock_the_partition_for_a_trusted_one() -> None:
    # An attacker who can write to Kafka races our writer to a partition's first key.
    log = Log().signed_partition(key=B).model(key=B)
    pinned = Log(Fold(verify=fake_verify, trusted=frozenset({A.key_id})))
    for event, partition in log.events:
        assert pinned.fold.apply(event, partition) is not None
    assert pinned.fold.rings == {} and pinned.fold.models == {}
    # Our writer, reading with the same pin, sees an empty ring and starts it.
    pinned.signed_partition(key=A).model(key=A)
    assert dict(pinned.fold.rings[0].active) == {A.key_id: A.public_key}
    assert pinned.fold.models["churn"].seq == 2
    # The attacker's next event is still void: their key is not in the ring.
    move = B.signed(pinned.next_event(MoveAlias("production", "main"), key_id=B.key_id))
    assert "an unknown key" in (pinned.fold.apply(move, 0) or "")


def test_an_unsigned_security_event_before_any_key_is_void() -> None:
    # Anyone who can write to Kafka could otherwise issue themselves an admin token.
    log = Log()
    body = IssueToken(TOKEN_ID, "mallory", "admin", token_sha256(TOKEN))
    forged = log.next_event(body, model=SECURITY_STREAM)
    assert (log.fold.apply(forged, 0) or "").startswith("unsigned: ")
    assert log.fold.security is None
    with pytest.raises(Unauthenticated):
        authenticate(log.fold.security, TOKEN, 1)
    # Nor does a key on another partition make this one's history signed.
    log.signed_partition(partition=1)
    assert (log.fold.apply(forged, 0) or "").startswith("unsigned: ")


def test_a_signed_event_on_a_partition_without_keys_is_not_legacy() -> None:
    # Legacy events were written before signing existed: a signed one never was.
    log = Log().model(key=None)
    move = A.signed(log.next_event(MoveAlias("production", "main"), key_id=A.key_id))
    reason = log.fold.apply(move, 0) or ""
    assert reason.startswith("bad signature: ") and "partition 0's ring does not hold" in reason
    assert log.fold.models["churn"].aliases == {}
    bare = replace(log.next_event(MoveAlias("production", "main")), signature=b"x" * 64)
    assert (log.fold.apply(bare, 0) or "").startswith("bad signature: ")
    assert log.fold.apply(log.next_event(MoveAlias("production", "main")), 0) is None


def test_the_first_ring_event_must_be_a_self_signed_key() -> None:
    added = decide(
        None, Command("k", keys_stream(0), "a", 1, AddWriterKey(A.public_key)), A.key_id
    )[0]
    other = replace(added, key_id=B.key_id)  # vouched by another key
    assert "ring does not hold" in (Fold(verify=fake_verify).apply(B.signed(other), 0) or "")
    unsigned = replace(added, key_id="")
    assert "added by itself" in (Fold(verify=fake_verify).apply(unsigned, 0) or "")
    badly = replace(added, signature=B.sign(b"not it"))
    assert (Fold(verify=fake_verify).apply(badly, 0) or "").startswith("bad signature: ")
    lying = replace(added, payload=WriterKeyAdded(B.key_id, A.public_key, ""), key_id=B.key_id)
    assert "not the sha256" in (Fold(verify=fake_verify).apply(A.signed(lying), 0) or "")
    retired_first = ModelEvent(
        keys_stream(0), 1, "0" * 64, "r", "a", 1, WriterKeyRetired(A.key_id, ""), key_id=A.key_id
    )
    assert Fold(verify=fake_verify).apply(A.signed(retired_first), 0) is not None
    assert Fold(verify=fake_verify).apply(A.signed(added), 0) is None


def test_a_key_ring_event_on_another_partition_is_void() -> None:
    (added,) = decide(
        None, Command("k", keys_stream(1), "a", 1, AddWriterKey(A.public_key)), A.key_id
    )
    reading = Fold(verify=fake_verify)
    assert "belongs on partition 1" in (reading.apply(A.signed(added), 0) or "")
    assert reading.rings == {}
    assert reading.apply(A.signed(added), 1) is None and set(reading.rings) == {1}


def test_a_forged_token_does_not_authenticate() -> None:
    log = Log().signed_partition()
    body = IssueToken(TOKEN_ID, "mallory", "admin", token_sha256(TOKEN))
    forged = log.next_event(body, model=SECURITY_STREAM)
    assert (log.fold.apply(forged, 0) or "").startswith("unsigned: ")
    with pytest.raises(Unauthenticated):
        authenticate(log.fold.security, TOKEN, 1)


def test_an_event_of_one_kind_of_chain_on_another_is_void() -> None:
    log = issued().model()
    token_event = log.events[1][0]
    on_model = replace(
        token_event, model="churn", seq=3, prev_hash=log.fold.models["churn"].last_hash
    )
    assert "no model event" in (log.fold.apply(A.signed(on_model), 0) or "")
    model_event = log.events[2][0]
    on_security = replace(
        model_event,
        model=SECURITY_STREAM,
        seq=2,
        prev_hash=log.fold.chain(SECURITY_STREAM).last_hash,  # type: ignore[union-attr]
    )
    assert "no ~security event" in (log.fold.apply(A.signed(on_security), 0) or "")


def test_signature_problem_leaves_legacy_partitions_alone() -> None:
    (event,) = decide(None, Command("c", "churn", "a", 1, CreateModel()))
    assert signature_problem(None, event, None) is None
    assert signature_problem(KeyRing(0, 0, "0" * 64, {}, {}, {}), event, None) is None
    (first_key,) = decide(
        None, Command("k", keys_stream(0), "a", 1, AddWriterKey(A.public_key)), A.key_id
    )
    assert signature_problem(None, A.signed(first_key), None) is None  # the ring's rule decides


def test_fold_takes_a_verifier() -> None:
    log = Log().signed_partition().model()
    assert fold((e for e, _ in log.events), verify=fake_verify).voided == 0
    assert fold(e for e, _ in log.events).voided == 2


# -- auditing --------------------------------------------------------------------------


def audited(events: list[tuple[ModelEvent, int]], trusted: frozenset[str] | None = None) -> Auditor:
    auditor = Auditor(fold=Fold(verify=fake_verify, trusted=trusted))
    for offset, (event, partition) in enumerate(events):
        auditor.check(event, Where("modelvc.events", partition, offset))
    return auditor


def test_a_forged_correctly_chained_event_is_reported_with_its_coordinates() -> None:
    log, forged = forged_after_signing(None)
    auditor = audited([*log.events, (forged, 0)])
    (finding,) = auditor.violations()
    assert (finding.kind, finding.model, finding.seq, str(finding.where)) == (
        "unsigned",
        "churn",
        3,
        f"modelvc.events[0]@{len(log.events)}",
    )
    assert auditor.fold.voided == 1


def test_audit_kinds_for_bad_signatures_and_untrusted_keys() -> None:
    assert {"unsigned", "bad_signature", "untrusted_key"} <= set(VIOLATIONS)
    log, forged = forged_after_signing(B, A.key_id)
    assert [f.kind for f in audited([*log.events, (forged, 0)]).violations()] == ["bad_signature"]
    kinds = [f.kind for f in audited(log.events, trusted=frozenset({B.key_id})).violations()]
    # The unpinned key is reported, and every event it signed (signed, but not by the ring).
    assert kinds == ["untrusted_key"] + ["bad_signature"] * (len(log.events) - 1)


def test_a_genuine_re_emission_is_still_a_harmless_duplicate() -> None:
    log = Log().signed_partition().model()
    auditor = audited([*log.events, log.events[-1]])
    assert list(auditor.violations()) == [] and auditor.duplicates() == 1


def test_a_replayed_event_signed_by_a_since_retired_key_is_caught() -> None:
    log = Log().signed_partition().model()
    old = log.events[-1]
    log.run(keys_stream(0), AddWriterKey(B.public_key), A)
    log.run(keys_stream(0), RetireWriterKey(A.key_id, "leaked"), B)
    assert [f.kind for f in audited([*log.events, old]).violations()] == ["bad_signature"]


def test_a_reordered_signed_pair_is_caught() -> None:
    log = Log().signed_partition().model()
    log.run("churn", MoveAlias("production", "main"))
    swapped = [*log.events[:-2], log.events[-1], log.events[-2]]
    assert [f.kind for f in audited(swapped).violations()] == ["reordered"]


SIGNERS: list[Callable[[], Log]] = [
    lambda: Log().model(key=None).signed_partition(),
    lambda: Log().signed_partition().model(),
]


@pytest.mark.parametrize("make", SIGNERS)
def test_the_audit_fold_and_the_live_fold_agree(make: Callable[[], Log]) -> None:
    log = make()
    log.run(SECURITY_STREAM, PROTECTED_ALIAS)
    auditor = audited(log.events)
    assert list(auditor.violations()) == []
    assert state_digest(auditor.fold.models) == state_digest(log.fold.models)
    assert auditor.fold.security == log.fold.security
