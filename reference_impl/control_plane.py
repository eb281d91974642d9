"""One guard for every local control plane: refuse what a web browser could send it.

A page on any site can make the browser of someone on this machine send requests to 127.0.0.1:
"simple" requests (GET, or a POST of a form: `text/plain`, `application/x-www-form-urlencoded`,
`multipart/form-data`) go out without a CORS preflight, and a rebound DNS name can even read the
answers. Toxiproxy refuses browser user agents; this guard does that and more:

- a request carrying `Origin` (browsers add it to cross-origin requests and to every POST), or
  `Sec-Fetch-Site` other than `none` / `same-origin` (a fetch started by another site), or a
  browser's `User-Agent` (`Mozilla/...`) is refused (403);
- a `Host` other than a loopback address or `localhost` is refused (403): DNS rebinding;
- a state-changing request (POST, PUT, PATCH, DELETE) with a body must say
  `Content-Type: application/json`, which a cross-site page cannot send without a preflight
  that nothing here answers (415).

The harness (requests, aiohttp, Toxiproxy's clients, curl) sends none of these. Used by the
supervisor's admin API and the fault proxy's API (`control_plane_guard`, the whole app) and the
services' `/admin/*` endpoints (`guarded`, route by route).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAFE_FETCH_SITES = frozenset({"none", "same-origin"})


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]" in host else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(method: str, headers: Mapping[str, str], has_body: bool) -> tuple[int, str, str] | None:
    """Why a request must be refused, as (status, error, detail); None when it may pass.

    Args:
        method: the HTTP method.
        headers: the request's headers (case-insensitive mapping).
        has_body: whether the request carries a body.
    """
    if "Origin" in headers:
        return 403, "forbidden", "a request with an Origin header (sent by a web page) is refused"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAFE_FETCH_SITES:
        return 403, "forbidden", f"a request a web page started (Sec-Fetch-Site: {site}) is refused"
    if headers.get("User-Agent", "").startswith("Mozilla/"):
        return 403, "forbidden", "browsers are refused: use the harness, curl or an HTTP client"
    host = headers.get("Host")
    if host is not None and not _loopback_host(host):
        return 403, "forbidden", f"Host {host!r} is not a loopback address (DNS rebinding?)"
    if method in STATE_CHANGING and (has_body or "Content-Type" in headers):
        kind = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return (
                415,
                "unsupported_media_type",
                f"a {method} body must be application/json (got {kind or 'none'})",
            )
    return None


def _refused(request: web.Request) -> web.Response | None:
    refused = refusal(request.method, request.headers, request.body_exists)
    if refused is None:
        return None
    status, error, detail = refused
    return web.json_response({"error": error, "detail": detail}, status=status)


def guarded(handler: Handler) -> Handler:
    """`handler`, behind the guard: for the control-plane routes of an app that serves others
    too (a service's `/admin/*` next to its public API)."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        refused = _refused(request)  # a response is a mapping: falsy when empty, so no `or`
        return refused if refused is not None else await handler(request)

    return guard


def control_plane_guard() -> Middleware:
    """aiohttp middleware applying `refusal` to every request of an app that is all control
    plane."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = _refused(request)
        return refused if refused is not None else await handler(request)

    return guard
