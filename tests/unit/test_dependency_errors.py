"""Which errors mean "a dependency went away" (a 503 the phone retries under its idempotency
key) and which are bugs of ours (a 500, logged with its traceback): `errors.dependency_unavailable`.
Each case is an error the API has really raised (the lost-dependency tests and experiments)."""

from __future__ import annotations

import asyncpg
import pytest
import redis

from reference_impl.errors import dependency_unavailable

GONE = [
    asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation: server conn crashed?"
    ),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"
    ),
    # Backends terminated under a one-statement submit (asyncpg #1069).
    asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    ),
    redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:7000."),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
]
OURS = [
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.exceptions.InternalClientError(
        "PoolConnectionHolder.release() called on a free connection holder"
    ),
    asyncpg.exceptions.UndefinedColumnError('column "nope" does not exist'),
    KeyError("request_id"),
    ValueError("bad"),
]


@pytest.mark.parametrize("exc", GONE, ids=lambda e: type(e).__name__)
def test_a_dependency_that_went_away_is_a_503(exc: Exception) -> None:
    assert dependency_unavailable(exc)


@pytest.mark.parametrize("exc", OURS, ids=lambda e: type(e).__name__)
def test_a_misuse_or_a_bug_stays_a_500(exc: Exception) -> None:
    assert not dependency_unavailable(exc)
