"""Writer keys on disk and signatures: owner-only key files, a verifier that never raises."""

from __future__ import annotations

import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from streams.core import Command, CreateModel
from streams.core.signatures import command_message, key_id_of
from streams.signing import (
    KeyFileError,
    SigningKey,
    WriterKey,
    command_verifies,
    read_public_key,
    sign_command,
    verify,
)

KEY = SigningKey.generate()
SIGNED = KEY.sign(b"message")


def test_a_new_key_file_is_owner_only_and_its_pub_names_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "writer.key"
    key = WriterKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8 PEM
    assert (tmp_path / "keys" / "writer.key.pub").read_text() == key.public_key + "\n"
    assert key.key_id == key_id_of(key.public_key) and key.public_path == public(path)
    again = WriterKey.load_or_create(path)
    assert (again.key_id, again.public_key) == (key.key_id, key.public_key)
    assert verify(key.public_key, b"m", again.sign(b"m"))
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def public(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def test_a_lost_or_wrong_pub_file_is_rewritten_from_the_key(tmp_path: Path) -> None:
    path = tmp_path / "writer.key"
    key = WriterKey.load_or_create(path)
    public(path).write_text("0" * 64 + "\n")
    WriterKey.load_or_create(path)
    assert read_public_key(public(path)) == key.public_key
    public(path).unlink()
    WriterKey.load_or_create(path)
    assert read_public_key(public(path)) == key.public_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_file_others_may_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "writer.key"
    WriterKey.load_or_create(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=re.escape(f"chmod 600 {path}")):
        WriterKey.load_or_create(path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a key",
        b"x" * (1 << 20),
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
    ids=["garbage", "huge", "encrypted", "p256"],
)
def test_a_key_file_that_is_no_usable_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "writer.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=r"writer\.key"):
        WriterKey.load_or_create(path)


def test_instances_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "writer.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: WriterKey.load_or_create(path).key_id, range(16)))
    assert len(set(keys)) == 1
    assert read_public_key(public(path)) == WriterKey.load_or_create(path).public_key


def test_verify_accepts_exactly_the_signed_message() -> None:
    assert verify(KEY.public_key, b"message", SIGNED)
    assert not verify(KEY.public_key, b"messagf", SIGNED)
    assert not verify(SigningKey.generate().public_key, b"message", SIGNED)
    flipped = bytes([SIGNED[0] ^ 1]) + SIGNED[1:]
    assert not verify(KEY.public_key, b"message", flipped)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        ("", SIGNED),
        ("zz" * 32, SIGNED),  # not hex
        (KEY.public_key.upper(), SIGNED),  # hex, but not the canonical lowercase
        (KEY.public_key[:-2], SIGNED),  # short
        (KEY.public_key + "00", SIGNED),  # long
        ("é" * 64, SIGNED),
        (KEY.public_key, b""),
        (KEY.public_key, SIGNED[:-1]),
        (KEY.public_key, SIGNED + b"\x00"),
        (KEY.public_key, b"\xff" * 64),
        (None, SIGNED),
        (KEY.public_key, "a string"),
    ],
)
def test_verify_says_no_to_hostile_input_and_never_raises(
    public_key: object, signature: object
) -> None:
    assert verify(public_key, b"message", signature) is False  # type: ignore[arg-type]


@given(st.text(max_size=80), st.binary(max_size=80), st.binary(max_size=80))
def test_verify_never_raises(public_key: str, message: bytes, signature: bytes) -> None:
    assert verify(public_key, message, signature) is False


def test_read_public_key_takes_a_pub_file_or_a_pem_public_key(tmp_path: Path) -> None:
    key = WriterKey.load_or_create(tmp_path / "writer.key")
    assert read_public_key(public(tmp_path / "writer.key")) == key.public_key
    pem = tmp_path / "writer.pem"
    private = serialization.load_pem_private_key(
        (tmp_path / "writer.key").read_bytes(), password=None
    )
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert read_public_key(pem) == key.public_key
    upper = tmp_path / "upper.pub"
    upper.write_text(f"  {key.public_key.upper()}\n")
    assert read_public_key(upper) == key.public_key


@pytest.mark.parametrize(
    "content", [b"", b"0" * 63, b"-----BEGIN PUBLIC KEY-----\nxx\n", b"x" * 70_000]
)
def test_read_public_key_refuses_what_is_no_public_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        read_public_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_public_key(tmp_path / "missing.pub")


def test_a_signed_command_verifies_and_any_change_to_it_does_not() -> None:
    command = sign_command(KEY, Command("c1", "churn", "ann", 5, CreateModel(), role="committer"))
    assert command.key_id == KEY.key_id
    assert verify(KEY.public_key, command_message(command), command.signature)
    assert command_verifies(KEY.public_key, command)
    for changed in (
        replace(command, role="admin"),
        replace(command, actor="bob"),
        replace(command, model="fraud"),
        replace(command, command_id="c2"),
        replace(command, body=CreateModel("trunk")),
        replace(command, signature=b""),
    ):
        assert not command_verifies(KEY.public_key, changed)
    assert not command_verifies(None, command)
