"""The public API as an OpenAPI 3 document, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

_error = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": _error}}}
        for c in codes
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "CloudWatcher API (reference implementation)", "version": "1.0.0"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {}},
            },
            "Request": {
                "type": "object",
                "required": ["request_id", "status", "response", "created_at", "updated_at"],
                "properties": {
                    "request_id": {"type": "string", "format": "uuid"},
                    "status": {
                        "type": "string",
                        "enum": ["queued", "processing", "completed", "failed", "dead_lettered"],
                    },
                    "provider": {"type": "string", "enum": ["sharepoint", "gdrive"]},
                    "response": {"type": "string", "nullable": True},
                    "error": {"type": "string", "nullable": True},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "Event": {
                "type": "object",
                "required": ["event_id", "type", "request_id"],
                "properties": {
                    "event_id": {"type": "integer"},
                    "type": {"type": "string", "enum": ["completed", "failed", "dead_lettered"]},
                    "request_id": {"type": "string", "format": "uuid"},
                    "status": {"type": "string"},
                },
            },
        },
    },
    "paths": {
        "/v1/devices": {
            "post": {
                "summary": "Register a device",
                "parameters": [
                    {
                        "name": "X-Registration-Secret",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["platform", "name"],
                            "properties": {
                                "platform": {"type": "string", "enum": ["ios", "android"]},
                                "name": {"type": "string", "maxLength": 200},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {
                        "description": "registered",
                        **_json(
                            {
                                "type": "object",
                                "required": ["device_id", "client_id", "client_secret"],
                                "properties": {
                                    "device_id": {"type": "string"},
                                    "client_id": {"type": "string"},
                                    "client_secret": {"type": "string"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 403, 413, 422),
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
                                    "grant_type": {
                                        "type": "string",
                                        "enum": ["client_credentials"],
                                    },
                                    "client_id": {"type": "string"},
                                    "client_secret": {"type": "string"},
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
                                    "access_token": {"type": "string"},
                                    "token_type": {"type": "string"},
                                    "expires_in": {"type": "integer"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 415),
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys of the token issuer",
                "responses": {"200": {"description": "JWKS"}},
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
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    }
                ],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["provider", "document", "instruction"],
                            "properties": {
                                "provider": {"type": "string", "enum": ["sharepoint", "gdrive"]},
                                "document": {"type": "string", "maxLength": 512},
                                "instruction": {"type": "string", "maxLength": 4000},
                            },
                        }
                    ),
                },
                "responses": {
                    "202": {
                        "description": "accepted",
                        **_json(
                            {
                                "type": "object",
                                "required": ["request_id", "status"],
                                "properties": {
                                    "request_id": {"type": "string"},
                                    "status": {"type": "string"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 409, 413, 422, 429, 503),
                },
            }
        },
        "/v1/requests/{request_id}": {
            "get": {
                "summary": "A request of this device (another device's is a 404)",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the request",
                        **_json({"$ref": "#/components/schemas/Request"}),
                    },
                    **_errors(401, 404, 429, 503),
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
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "events",
                        **_json(
                            {
                                "type": "object",
                                "required": ["events", "next_cursor"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                    "next_cursor": {"type": "string"},
                                    "more": {"type": "boolean"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 429, 503),
                },
            }
        },
        "/v1/updates": {
            "get": {
                "summary": "WebSocket of the device events; last_event_id replays the missed ones",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
                ],
                "responses": {"101": {"description": "switching protocols"}, **_errors(400, 401)},
            }
        },
        "/health/live": {"get": {"responses": {"200": {"description": "live"}}}},
        "/health/ready": {
            "get": {
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}
            }
        },
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus metrics"}}}},
    },
}
