"""The rules a client's input must follow, in one place.

The handlers enforce them, `/openapi.json` states them (`pattern`, `minLength`, `maxLength`), and
the storage gateway and its provider emulators apply the same document-name rule: what the
document promises is exactly what the code accepts. Patterns are written so that JSON Schema's
(ECMA 262) reading and Python's `re.fullmatch` agree: explicit ASCII classes, no `\\d` or `\\w`.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from yarl import URL

#: A document is a file name in the provider's folder: no path, no hidden file, no encoding.
DOCUMENT_MAX_LENGTH = 200
DOCUMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
DOCUMENT_RULE = (
    "a file name: 1 to 200 characters among A-Z a-z 0-9 . _ -, beginning with a letter or digit"
)

#: Client-chosen, so it shows up in logs and tables: visible ASCII only, no spaces.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,128}$"
IDEMPOTENCY_KEY_RULE = "1 to 128 visible ASCII characters (no spaces)"

#: `/v1/sync`'s cursor: a bigint, written in decimal.
CURSOR_PATTERN = r"^[0-9]{1,18}$"

#: `/v1/updates`' last_event_id: the `resume` value of the hub's last message (a cursor, then the
#: ids above it the phone has, each as its step from the one before in base 36), or an event id.
RESUME_MAX_IDS = 1000
RESUME_MAX_LENGTH = 4000
RESUME_PATTERN = rf"^[0-9]{{1,18}}(,[0-9a-z]{{1,13}}){{0,{RESUME_MAX_IDS}}}$"

#: Stored as PostgreSQL `text`, which cannot hold NUL.
DEVICE_NAME_MAX_LENGTH = 200
#: Client ids and secrets are short (`auth.new_client_credentials`); longer is not ours.
CREDENTIAL_MAX_LENGTH = 200
DEVICE_NAME_PATTERN = r"^[^\u0000]{1,200}$"

INSTRUCTION_MAX_LENGTH = 4000

#: `/v1/request-statuses`: request ids read in one call (about 20 KB of body, within the API's
#: 64 KB; a device's whole day of requests in a few calls).
STATUS_BATCH_MAX = 500
#: A request id as JSON Schema's `format: uuid` reads it (RFC 4122's hyphenated hex); Python's
#: `uuid.UUID` would also take braces, a `urn:uuid:` prefix and bare hex.
UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"

_DOCUMENT = re.compile(DOCUMENT_PATTERN.strip("^$"))
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.strip("^$"))
_CURSOR = re.compile(CURSOR_PATTERN.strip("^$"))
_RESUME = re.compile(RESUME_PATTERN.strip("^$"))
_UUID = re.compile(UUID_PATTERN.strip("^$"))


def is_document_name(value: object) -> bool:
    """Whether `value` is a document name the API accepts (see `DOCUMENT_RULE`)."""
    return isinstance(value, str) and _DOCUMENT.fullmatch(value) is not None


def is_idempotency_key(value: object) -> bool:
    return isinstance(value, str) and _IDEMPOTENCY_KEY.fullmatch(value) is not None


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def is_cursor(value: object) -> bool:
    return isinstance(value, str) and _CURSOR.fullmatch(value) is not None


def is_resume(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= RESUME_MAX_LENGTH
        and _RESUME.fullmatch(value) is not None
    )


def url_of(base: str, *segments: str) -> URL:
    """`base` followed by path segments, each percent-encoded: a name is data, never path syntax
    (a `/`, `..` or `?` in it cannot reach another route). Encoded already, so aiohttp sends it
    as it is."""
    return URL(base.rstrip("/") + "".join("/" + quote(s, safe="") for s in segments), encoded=True)
