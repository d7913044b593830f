"""Ed25519 keys and signatures: the shell side of ``streams.core.signatures``.

The core decides *what* is signed (``event_message``, ``command_message``) and
which keys count (the rings); this module holds the cryptography: a private key
kept in a file only its owner can read, signing, and a verification that never
raises on hostile input and keeps parsed public keys, so the hot path costs one
signature check per event.

One class serves every key the project keeps (the streams writer key, a worker's
prediction key): :class:`SigningKey`; :data:`WriterKey` names its first use.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from streams.core import signatures
from streams.core.commands import Command
from streams.core.events import ModelEvent
from streams.core.signatures import key_id_of as key_id_of  # the id rule's home; re-exported
from streams.files import PrivateFileError, create_exclusively, read_private, write_atomically

# A PEM key is a few hundred bytes: anything far larger is not one, so it is not read whole.
MAX_KEY_FILE_BYTES = 16 << 10


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says what to do."""


def _raw_hex(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is over {MAX_KEY_FILE_BYTES:,} bytes: it holds no key")
    return data


class SigningKey:
    """An Ed25519 private key, its public half (64 hex) and key id."""

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private
        self.path = path  # where it is kept (None: in memory only, for tests)
        self.public_key = _raw_hex(private.public_key())
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Self:
        """A fresh key kept nowhere (tests; :meth:`load_or_create` keeps one)."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_path(self) -> Path | None:
        """The ``.pub`` file beside the key: what ``modelvc key add`` and auditors read."""
        return None if self.path is None else public_path(self.path)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @classmethod
    def load_or_create(cls, path: Path) -> Self:
        """The key in ``path``, made on first use (PKCS8 PEM, mode 0600) with ``<path>.pub``.

        Refuses a key file others may read: whoever read it can sign as this writer.
        Two processes starting at once with the same path end up with the same key.
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            fresh = Ed25519PrivateKey.generate()
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            create_exclusively(path, pem, 0o600)  # False: another process made it first
        key = cls(_load_private(path), path)
        pub = public_path(path)
        text = f"{key.public_key}\n".encode()
        # The .pub is derived: (re)written from the key, never trusted over it.
        if not pub.exists() and create_exclusively(pub, text, 0o644):
            return key
        if _read_bounded(pub) != text:
            write_atomically(pub, text)
        return key


# Its first use: the key a streams instance signs events and commands with.
WriterKey = SigningKey


def public_path(key_path: Path) -> Path:
    return key_path.with_name(f"{key_path.name}.pub")


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = read_private(path, MAX_KEY_FILE_BYTES)
    except PrivateFileError as exc:
        advice = (
            " (anyone who read it can sign as this instance: retire it with "
            "`modelvc key retire KEY_ID --reason TEXT`)"
            if exc.exposed
            else ""
        )
        raise KeyFileError(f"key file {exc}{advice}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key ({exc}); move it aside and "
            "start again to make a new one"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(private).__name__}, not an Ed25519 key; move it aside "
            "and start again to make a new one"
        )
    return private


@functools.lru_cache(maxsize=4096)
def _public(public_key_hex: str) -> Ed25519PublicKey | None:
    # Cached, invalid ones too (as None): a ring holds a handful of keys, and a hostile
    # event naming fresh junk costs one parse each, bounded by the cache's size.
    if not signatures.PUBLIC_KEY.fullmatch(public_key_hex):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    except ValueError:
        return None


def verify(public_key_hex: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key_hex``'s over ``message``; False, never an
    exception, for anything malformed (the arguments come from the log)."""
    if (
        not isinstance(public_key_hex, str)
        or not isinstance(signature, bytes)
        or not isinstance(message, bytes)
        or len(signature) != signatures.SIGNATURE_BYTES
    ):
        return False
    public = _public(public_key_hex)
    if public is None:
        return False
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def read_public_key(path: Path) -> str:
    """The raw public key (64 lowercase hex) in ``path``: a ``.pub`` file or a PEM public key."""
    try:
        data = _read_bounded(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read the public key file {path}: {exc.strerror}") from exc
    text = data.decode("ascii", "replace").strip()
    if signatures.PUBLIC_KEY.fullmatch(text.lower()):
        return text.lower()
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not a readable PEM public key ({exc})") from exc
        if isinstance(public, Ed25519PublicKey):
            return _raw_hex(public)
        raise KeyFileError(f"{path} holds a {type(public).__name__}, not an Ed25519 key")
    raise KeyFileError(
        f"{path} is neither a writer key's .pub file (64 hex digits) nor a PEM public key; "
        "pass the .pub file beside the key, e.g. $MODELVC_HOME/keys/writer.key.pub"
    )


def sign_event(signer: SigningKey, event: ModelEvent) -> ModelEvent:
    """``event`` signed by ``signer``: over its hash, which covers its ``key_id``."""
    # A key id naming another key would make a signature no reader can check.
    assert event.key_id == signer.key_id, (event.key_id, signer.key_id)
    return replace(event, signature=signer.sign(signatures.event_message(event.hash())))


def sign_command(signer: SigningKey, command: Command) -> Command:
    """``command`` signed by ``signer`` (the API's instance key): what the writer checks."""
    message = signatures.command_message(command)
    return replace(command, key_id=signer.key_id, signature=signer.sign(message))


def command_verifies(public_key_hex: str | None, command: Command) -> bool:
    """Whether ``command`` carries ``public_key_hex``'s signature (None: no such key)."""
    if public_key_hex is None or not command.signature:
        return False
    return verify(public_key_hex, signatures.command_message(command), command.signature)
