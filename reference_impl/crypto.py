"""Field-level encryption at rest: AES-256-GCM with a random nonce per value.

The associated data binds a ciphertext to its row and field, so a value copied into another row
or column fails to decrypt instead of silently reading as someone else's data.
"""

from __future__ import annotations

import os
from pathlib import Path

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
