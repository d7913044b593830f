"""A stand-in for ``streams.signing`` in the core's unit tests (no cryptography in the core).

The core receives its verifier as a collaborator; these tests inject an HMAC
one. It is NOT a signature scheme (the "private" key is the public key), which
is fine here: it tells apart messages, keys and signatures exactly as a real
verifier would, and the real Ed25519 one is tested in ``tests/unit/test_signing.py``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from streams.core.events import ModelEvent
from streams.core.hashing import sha256_hex
from streams.core.signatures import event_message, key_id_of


@dataclass(frozen=True)
class FakeKey:
    public_key: str

    @classmethod
    def named(cls, name: str) -> FakeKey:
        return cls(sha256_hex(name.encode()))

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return hmac.new(bytes.fromhex(self.public_key), message, hashlib.sha512).digest()

    def signed(self, event: ModelEvent) -> ModelEvent:
        """``event`` with this key's signature (its ``key_id`` must already be stamped)."""
        return ModelEvent(**{**event.__dict__, "signature": self.sign(event_message(event.hash()))})


def fake_verify(public_key: str, message: bytes, signature: bytes) -> bool:
    expected = hmac.new(bytes.fromhex(public_key), message, hashlib.sha512).digest()
    return hmac.compare_digest(expected, signature)
