"""Errors as JSON: `{"error": code, "detail": ...}` with the right status, for every route.

No input a client sends yields a 5xx: aiohttp's own HTTP errors (413, 405, 404 ...) are turned into
JSON here too, and an unexpected exception is logged and answered 500 only when it is ours.
Dependencies being down answer 503 with Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import web

log = logging.getLogger("cw.errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(web.HTTPException):
    """An error the API means to send: status, machine-readable code and a human detail."""

    def __init__(
        self,
        status: int,
        detail: Any,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status
        super().__init__(headers=headers)
        self.code = code or CODES.get(status, "error")
        self.detail = detail


def error_response(
    status: int, code: str, detail: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


#: Headers of an HTTP error worth passing on; the rest (Content-Type...) is the JSON body's.
KEPT_HEADERS = ("allow", "retry-after", "www-authenticate")


def _kept(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in KEPT_HEADERS}


#: A dependency that is down, restarting or unreachable: the client should retry (503).
UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.ConnectionError,
)


def dependency_unavailable(exc: Exception) -> bool:
    """True for the errors of a dependency that went away, including asyncpg's InterfaceError
    when it says the connection closed under us (a transaction's exit after pgBouncer dropped
    the client): that one is not a PostgresError, and answered 500 in the kill-lb experiment.
    Other InterfaceErrors (and InternalClientErrors) are misuses of asyncpg: bugs of ours."""
    if isinstance(exc, UNAVAILABLE):
        return True
    text = str(exc)
    # asyncpg's protocol loses track of its state when the server side dies under a statement
    # being prepared (asyncpg #1069; SQLAlchemy takes it for a disconnect, its #13241): seen when
    # backends were terminated under one-statement submits. The pool terminates that connection
    # on release (its reset fails), so the retry gets a fresh one.
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return "cannot switch to state" in text
    return isinstance(exc, asyncpg.InterfaceError) and (
        "connection is closed" in text or "connection was closed" in text
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status_code, exc.code, exc.detail, _kept(exc))
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        return error_response(
            exc.status_code, CODES.get(exc.status_code, "error"), exc.reason, _kept(exc)
        )
    except Exception as exc:
        if not dependency_unavailable(exc):
            # The route template, not the path: a path may carry an encrypted-at-rest name.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            log.exception("unhandled error on %s %s", request.method, route)
            return error_response(500, "internal", "internal error")
        log.warning("dependency unavailable: %r", exc)
        return error_response(
            503, "unavailable", "a dependency is unavailable, retry", {"Retry-After": "1"}
        )


#: What parsing untrusted JSON may raise: bad syntax or encoding, and nesting deeper than the
#: parser's recursion limit (60 KB of `[` is a RecursionError, not a ValueError).
JSON_ERRORS = (ValueError, UnicodeDecodeError, RecursionError)


async def json_body(request: web.Request) -> Any:
    """The request's JSON body; a 400 with a JSON reason when it is not JSON."""
    try:
        return await request.json()
    except JSON_ERRORS:
        raise ApiError(400, "body is not valid JSON") from None
