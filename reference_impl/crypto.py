"""Field-level encryption at rest: AES-256-GCM with a random nonce per value.

The associated data binds a ciphertext to its row and field, so a value copied into another row
or column fails to decrypt instead of silently reading as someone else's data.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class FieldCipher:
    def __init__(self, key_path: Path) -> None:
        self._aead = AESGCM(key_path.read_bytes())

    def encrypt(self, plaintext: str, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, blob: bytes, context: str) -> str:
        nonce, ct = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ct, context.encode()).decode()

    def seal(self, plaintext: str, key_name: str) -> str:
        """Ciphertext as text, bound to the cache key it is stored under (for Redis, which
        must never hold a response or a document name in the clear)."""
        return base64.b64encode(self.encrypt(plaintext, key_name)).decode()

    def unseal(self, sealed: str | bytes, key_name: str) -> str:
        """The plaintext of `seal(..., key_name)`.

        Raises:
            ValueError: not a ciphertext of ours for this key (tampered, another key's, or a
                plaintext value cached before values were sealed).
        """
        try:
            return self.decrypt(base64.b64decode(sealed, validate=True), key_name)
        except InvalidTag:
            raise ValueError(f"{key_name}: not a ciphertext of ours") from None
