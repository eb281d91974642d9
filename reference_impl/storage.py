"""Cloud storage: provider emulators (SharePoint-like, Google-Drive-like) and the gateway.

Each emulator serves the corpus folder over HTTP, with fault knobs. The gateway fetches from the
provider a request names, fails over to the other on network errors and 5xx, honours
Retry-After on 429 (up to a bound, then fails over), and keeps a small cache, the seed's edge
cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from reference_impl import contract, observability
from reference_impl.errors import ApiError, error_middleware
from reference_impl.knobs import KNOBS, install_knobs
from reference_impl.settings import ServiceSettings

log = logging.getLogger("cw.storage")

SETTINGS = web.AppKey("settings", ServiceSettings)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CACHE = web.AppKey("cache", OrderedDict)
OUTCOMES = web.AppKey("outcomes", Counter)

CACHE_ENTRIES = 256
CACHE_TTL_S = 60.0
MAX_RETRY_AFTER_S = 2.0
PROVIDER_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=1)


def _safe_name(name: str) -> str:
    """The document name of a path, checked by the API's own rule (never a path of its own).

    The name is encrypted at rest, so neither this refusal nor any other answer, log line or span
    repeats it.
    """
    if not contract.is_document_name(name):
        raise ApiError(422, {"field": "name", "problem": contract.DOCUMENT_RULE})
    return name


# ---- emulator ------------------------------------------------------------------------------


async def get_file(request: web.Request) -> web.StreamResponse:
    injected = await request.app[KNOBS].apply(request)
    if injected is not None:
        return injected
    name = _safe_name(request.match_info["name"])
    path = request.app[SETTINGS].corpus_dir / name
    if not path.is_file():
        raise ApiError(404, "no such document")
    return web.Response(text=path.read_text(), content_type="text/plain")


def create_emulator(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    observability.install(app, settings)
    install_knobs(app, b"\xff\xfe\x00 not UTF-8 \xc3\x28", "text/plain")
    app.router.add_get("/v1/files/{name}", get_file)
    return app


# ---- gateway -------------------------------------------------------------------------------


class ProviderError(Exception):
    """The provider failed in a way another provider may not (network, 5xx, long 429)."""


async def _fetch(app: web.Application, provider: str, name: str) -> str | None:
    """The document's text, None when the provider says it does not exist."""
    settings = app[SETTINGS]
    base = settings.sharepoint_url if provider == "sharepoint" else settings.gdrive_url
    outcomes = app[OUTCOMES]
    for attempt in range(2):
        try:
            url = contract.url_of(base, "v1", "files", name)
            async with app[SESSION].get(url) as resp:
                if resp.status == 200:
                    try:
                        text = await resp.text()
                    except (UnicodeDecodeError, LookupError):
                        # Garbage from one provider is that provider's failure: fail over.
                        outcomes.labels(provider, "malformed").inc()
                        raise ProviderError(
                            f"{provider} answered text that does not decode"
                        ) from None
                    outcomes.labels(provider, "ok").inc()
                    return text
                if resp.status == 404:
                    outcomes.labels(provider, "not_found").inc()
                    return None
                if resp.status == 429:
                    outcomes.labels(provider, "429").inc()
                    try:
                        wait = float(resp.headers.get("Retry-After", "1"))
                    except ValueError:
                        wait = 1.0
                    if attempt == 0 and wait <= MAX_RETRY_AFTER_S:
                        await asyncio.sleep(wait)
                        continue
                    raise ProviderError(f"{provider} rate limited (Retry-After {wait:g} s)")
                outcomes.labels(provider, "error").inc()
                raise ProviderError(f"{provider} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcomes.labels(provider, "network").inc()
            raise ProviderError(f"{provider} unreachable: {type(exc).__name__}") from exc
    raise ProviderError(f"{provider} still rate limited")


async def get_document(request: web.Request) -> web.StreamResponse:
    provider = request.match_info["provider"]
    if provider not in ("sharepoint", "gdrive"):
        raise ApiError(404, "unknown provider")
    name = _safe_name(request.match_info["name"])
    cache: OrderedDict[str, tuple[float, str, str]] = request.app[CACHE]
    key = f"{provider}/{name}"
    hit = cache.get(key)
    if hit and time.monotonic() - hit[0] < CACHE_TTL_S:
        cache.move_to_end(key)
        return web.json_response({"provider": hit[1], "content": hit[2], "cached": True})
    order = [provider, "gdrive" if provider == "sharepoint" else "sharepoint"]
    errors = []
    for candidate in order:
        try:
            text = await _fetch(request.app, candidate, name)
        except ProviderError as exc:
            errors.append(str(exc))
            log.warning("provider failed, trying the next: %s", exc)
            continue
        if text is None:
            raise ApiError(404, f"no such document at {candidate}")
        cache[key] = (time.monotonic(), candidate, text)
        cache.move_to_end(key)
        while len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)
        return web.json_response({"provider": candidate, "content": text, "cached": False})
    raise ApiError(503, {"providers": errors}, code="unavailable", headers={"Retry-After": "1"})


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(timeout=PROVIDER_TIMEOUT)
    yield
    await app[SESSION].close()


def create_gateway(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[CACHE] = OrderedDict()
    metrics = observability.install(app, settings)
    app[OUTCOMES] = Counter(
        "cw_storage_calls_total",
        "Provider calls by outcome",
        ["provider", "outcome"],
        registry=metrics.registry,
    )
    app.cleanup_ctx.append(_session)
    app.router.add_get("/v1/documents/{provider}/{name}", get_document)
    return app
