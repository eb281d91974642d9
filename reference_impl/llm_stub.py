"""An OpenAI-compatible chat-completions stub with fault knobs (latency, errors, 429s)."""

from __future__ import annotations

import hashlib
import time
import uuid

from aiohttp import web
from prometheus_client import Counter

from reference_impl import observability
from reference_impl.errors import ApiError, error_middleware, json_body
from reference_impl.knobs import KNOBS, install_knobs
from reference_impl.settings import ServiceSettings

CALLS = web.AppKey("calls", Counter)


async def chat_completions(request: web.Request) -> web.Response:
    knobs = request.app[KNOBS]
    injected = await knobs.apply(request)
    if injected is not None:
        request.app[CALLS].labels(str(injected.status)).inc()
        return injected
    body = await json_body(request)
    messages = body.get("messages") if isinstance(body, dict) else None
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    ):
        raise ApiError(422, "messages must be a non-empty list of {role, content}")
    prompt = "\n".join(m["content"] for m in messages)
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    words = len(prompt.split())
    content = f"[stub {digest}] Processed {words} words: " + prompt[-200:].replace("\n", " ")
    request.app[CALLS].labels("200").inc()
    return web.json_response(
        {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub-1"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": {
                "prompt_tokens": words,
                "completion_tokens": len(content.split()),
                "total_tokens": words + len(content.split()),
            },
        }
    )


def create_app(settings: ServiceSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    metrics = observability.install(app, settings)
    app[CALLS] = Counter(
        "cw_llm_stub_calls_total", "Calls by status", ["status"], registry=metrics.registry
    )
    # The shape an OpenAI-compatible proxy might return on a bad day: JSON, no usable content.
    install_knobs(app, b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{}]}')
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app
