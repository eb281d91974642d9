"""The public API as an OpenAPI 3 document, served at `/openapi.json`.

It describes exactly what the public frontend accepts: the input rules come from
`reference_impl.contract`, which the handlers enforce, and schemathesis checks the two against
each other in the test suite (`tests/reference_impl/test_contract.py`). Health, metrics and admin
routes are not in it: they live on each replica's own port, and the public frontend refuses them.
"""

from __future__ import annotations

from typing import Any

from reference_impl import contract

_error = {"$ref": "#/components/schemas/Error"}
_retry_after = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in codes:
        out[str(c)] = {"description": "error", "content": {"application/json": {"schema": _error}}}
        if c in (429, 503):
            out[str(c)]["headers"] = _retry_after
    return out


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _string(**rules: Any) -> dict[str, Any]:
    return {"type": "string", **rules}


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
#: Declared per operation that may be limited: per device in the API, per client address at the
#: load balancer (registration and tokens).
RATE_LIMITED = 429

_no_nul = {"pattern": r"^[^\u0000]*$"}

_status = _string(enum=["queued", "processing", "completed", "failed", "dead_lettered"])

_request_body = {
    "type": "object",
    "required": ["provider", "document", "instruction"],
    "properties": {
        "provider": _string(enum=["sharepoint", "gdrive"]),
        "document": _string(
            description=contract.DOCUMENT_RULE,
            minLength=1,
            maxLength=contract.DOCUMENT_MAX_LENGTH,
            pattern=contract.DOCUMENT_PATTERN,
        ),
        "instruction": _string(minLength=1, maxLength=contract.INSTRUCTION_MAX_LENGTH, **_no_nul),
    },
}

_device_body = {
    "type": "object",
    "required": ["platform", "name"],
    "properties": {
        "platform": _string(enum=["ios", "android"]),
        "name": _string(minLength=1, maxLength=contract.DEVICE_NAME_MAX_LENGTH, **_no_nul),
    },
}

_jwks = {
    "type": "object",
    "required": ["keys"],
    "properties": {
        "keys": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["kty", "kid", "n", "e"],
                "properties": {
                    "kty": _string(enum=["RSA"]),
                    "use": _string(enum=["sig"]),
                    "alg": _string(enum=["RS256"]),
                    "kid": _string(),
                    "n": _string(),
                    "e": _string(),
                },
            },
        }
    },
}

_websocket_handshake = [
    # A WebSocket opening handshake (RFC 6455); without it the hub answers 400.
    {"name": "Upgrade", "in": "header", "required": True, "schema": _string(enum=["websocket"])},
    {"name": "Connection", "in": "header", "required": True, "schema": _string(enum=["Upgrade"])},
    {
        "name": "Sec-WebSocket-Version",
        "in": "header",
        "required": True,
        "schema": _string(enum=["13"]),
    },
    {
        "name": "Sec-WebSocket-Key",
        "in": "header",
        "required": True,
        "schema": _string(pattern=r"^[A-Za-z0-9+/]{21}[AQgw]==$"),
    },
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "CloudWatcher API (reference implementation)", "version": "1.2.0"},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            # Off only where the operator configured no secret (a staging system may differ).
            "registrationSecret": {
                "type": "apiKey",
                "in": "header",
                "name": "X-Registration-Secret",
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": _string(), "detail": {}},
            },
            "Request": {
                "type": "object",
                "required": ["request_id", "status", "response", "created_at", "updated_at"],
                "properties": {
                    "request_id": _string(format="uuid"),
                    "status": _status,
                    "provider": _string(enum=["sharepoint", "gdrive"]),
                    "response": _string(nullable=True),
                    "error": _string(nullable=True),
                    "created_at": _string(format="date-time"),
                    "updated_at": _string(format="date-time"),
                },
            },
            "Event": {
                "type": "object",
                "required": ["event_id", "type", "request_id"],
                "properties": {
                    "event_id": {"type": "integer"},
                    "type": _string(enum=["completed", "failed", "dead_lettered"]),
                    "request_id": _string(format="uuid"),
                    "status": _string(),
                },
            },
        },
    },
    "paths": {
        "/v1/devices": {
            "post": {
                "summary": "Register a device",
                "security": [{"registrationSecret": []}],
                "requestBody": {"required": True, **_json(_device_body)},
                "responses": {
                    "201": {
                        "description": "registered",
                        **_json(
                            {
                                "type": "object",
                                "required": ["device_id", "client_id", "client_secret"],
                                "properties": {
                                    "device_id": _string(format="uuid"),
                                    "client_id": _string(),
                                    "client_secret": _string(),
                                },
                            }
                        ),
                    },
                    **_errors(400, 403, 413, 422, RATE_LIMITED, 503),
                },
            }
        },
        "/oauth/token": {
            "post": {
                "summary": "Client-credentials grant: an RS256 access token naming the device",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["grant_type", "client_id", "client_secret"],
                                "properties": {
                                    "grant_type": _string(enum=["client_credentials"]),
                                    "client_id": _string(
                                        minLength=1,
                                        maxLength=contract.CREDENTIAL_MAX_LENGTH,
                                        **_no_nul,
                                    ),
                                    "client_secret": _string(
                                        minLength=1,
                                        maxLength=contract.CREDENTIAL_MAX_LENGTH,
                                        **_no_nul,
                                    ),
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "token",
                        **_json(
                            {
                                "type": "object",
                                "required": ["access_token", "token_type", "expires_in"],
                                "properties": {
                                    "access_token": _string(),
                                    "token_type": _string(enum=["Bearer"]),
                                    "expires_in": {"type": "integer", "minimum": 1},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 413, 415, RATE_LIMITED, 503),
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys of the token issuer: every key a token may be signed with",
                "responses": {"200": {"description": "JWKS", **_json(_jwks)}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3", **_json({"type": "object"})}},
            }
        },
        "/v1/requests": {
            "post": {
                "summary": "Submit a request (idempotent per Idempotency-Key)",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "description": contract.IDEMPOTENCY_KEY_RULE,
                        "schema": _string(pattern=contract.IDEMPOTENCY_KEY_PATTERN),
                    }
                ],
                "requestBody": {"required": True, **_json(_request_body)},
                "responses": {
                    "202": {
                        "description": "accepted",
                        **_json(
                            {
                                "type": "object",
                                "required": ["request_id", "status"],
                                "properties": {
                                    "request_id": _string(format="uuid"),
                                    "status": _string(),
                                },
                            }
                        ),
                        "links": {
                            "GetRequest": {
                                "operationId": "getRequest",
                                "parameters": {"request_id": "$response.body#/request_id"},
                            }
                        },
                    },
                    **_errors(400, 401, 409, 413, 422, RATE_LIMITED, 503),
                },
            }
        },
        "/v1/requests/{request_id}": {
            "get": {
                "operationId": "getRequest",
                "summary": "A request of this device (another device's is a 404)",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "schema": _string(format="uuid"),
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the request",
                        **_json({"$ref": "#/components/schemas/Request"}),
                    },
                    **_errors(401, 404, RATE_LIMITED, 503),
                },
            }
        },
        "/v1/request-statuses": {
            "post": {
                "summary": "Statuses of many requests of this device in one call (another"
                " device's ids are missing)",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["request_ids"],
                            "properties": {
                                "request_ids": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": contract.STATUS_BATCH_MAX,
                                    "items": _string(format="uuid", pattern=contract.UUID_PATTERN),
                                }
                            },
                        }
                    ),
                },
                "responses": {
                    "200": {
                        "description": "the statuses found, and the ids not found",
                        **_json(
                            {
                                "type": "object",
                                "required": ["requests", "missing"],
                                "properties": {
                                    "requests": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["request_id", "status", "updated_at"],
                                            "properties": {
                                                "request_id": _string(format="uuid"),
                                                "status": _status,
                                                "updated_at": _string(format="date-time"),
                                            },
                                        },
                                    },
                                    "missing": {
                                        "type": "array",
                                        "items": _string(format="uuid"),
                                    },
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 413, 422, RATE_LIMITED, 503),
                },
            }
        },
        "/v1/sync": {
            "get": {
                "summary": "The device's events after a cursor (background sync)",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": _string(pattern=contract.CURSOR_PATTERN),
                    }
                ],
                "responses": {
                    "200": {
                        "description": "events",
                        **_json(
                            {
                                "type": "object",
                                "required": ["events", "next_cursor", "more"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                    "next_cursor": _string(pattern=contract.CURSOR_PATTERN),
                                    "more": {"type": "boolean"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, RATE_LIMITED, 503),
                },
            }
        },
        "/v1/updates": {
            "get": {
                "summary": "WebSocket of the device events; last_event_id replays the missed ones",
                "security": BEARER,
                "parameters": [
                    *_websocket_handshake,
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "description": "the `resume` value of the last message received"
                        " (opaque), or an event id; tokens go in the Authorization header only"
                        " (`access_token` in the URL is a 400)",
                        "schema": _string(
                            pattern=contract.RESUME_PATTERN,
                            maxLength=contract.RESUME_MAX_LENGTH,
                        ),
                    },
                ],
                "responses": {"101": {"description": "switching protocols"}, **_errors(400, 401)},
            }
        },
    },
}
