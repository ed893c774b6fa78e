"""The OpenAPI 3.1 document of the keys admin API, served at `GET /admin/openapi.json`.

Written out by hand rather than generated: the API is six routes, and this way the document
says what the routes promise (the secret shown once, 409 for config keys, 503 when the
database is down) rather than what a framework could infer. Deliberately not here: the
OpenAI-compatible routes, which OpenAI documents.
"""

from __future__ import annotations

from typing import Any

_LIMITS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"type": ["integer", "null"], "minimum": 1}
        for name in ("rpm", "tpm", "max_concurrent", "daily_tokens", "monthly_tokens")
    },
}
_BUDGET = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "daily_usd": {"type": ["number", "null"], "minimum": 0},
        "monthly_usd": {"type": ["number", "null"], "minimum": 0},
    },
}
_TIME = {
    "description": "Unix seconds, or an ISO 8601 time with an offset; answers give seconds.",
    "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}, {"type": "null"}],
}
_MODELS = {"type": ["array", "null"], "items": {"type": "string"}, "description": "null: all"}

_KEY = {
    "type": "object",
    "properties": {
        "object": {"const": "key"},
        "id": {"type": "string"},
        "source": {"enum": ["database", "config"]},
        "status": {"enum": ["active", "blocked", "expired", "revoked"]},
        "models": _MODELS,
        "limits": _LIMITS,
        "budget": _BUDGET,
        "expires_at": {"type": ["number", "null"]},
        "blocked": {"type": "boolean"},
        "revoked_at": {"type": ["number", "null"]},
        "metadata": {"type": "object"},
        "created_at": {"type": ["number", "null"]},
        "updated_at": {"type": ["number", "null"]},
        "previous_secret_valid_until": {
            "type": ["number", "null"],
            "description": "After a rotation with a grace period: when the old secret stops.",
        },
    },
}
_KEY_WITH_SECRET = {
    "allOf": [
        {"$ref": "#/components/schemas/Key"},
        {
            "type": "object",
            "required": ["key"],
            "properties": {"key": {"type": "string", "description": "The secret, shown once."}},
        },
    ]
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "Invalid input.",
        401: "Missing or wrong admin key.",
        404: "No such key (or the admin routes are off).",
        409: "A config file key, or an id already used.",
        503: "The key database is unreachable; nothing changed.",
    }
    return {str(c): {"description": words[c], **_json("Error")} for c in codes}


def openapi_document() -> dict[str, Any]:
    key_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gateway keys admin API",
            "version": "1",
            "description": "Keys managed at runtime. Every change is enforced by "
            "every replica within 1 second. Expired, blocked and revoked keys get the same "
            "401 as unknown ones.",
        },
        "security": [{"adminKey": []}],
        "paths": {
            "/admin/keys": {
                "get": {
                    "summary": "List keys (config and database); never a secret or its hash",
                    "responses": {"200": {"description": "The keys."}, **_errors(401, 404)},
                },
                "post": {
                    "summary": "Create a key; the answer holds its secret, this once",
                    "requestBody": _json("KeyCreate"),
                    "responses": {
                        "201": {"description": "Created.", **_json("KeyWithSecret")},
                        **_errors(400, 401, 404, 409, 503),
                    },
                },
            },
            "/admin/keys/{id}": {
                "parameters": [key_id],
                "get": {
                    "summary": "One key",
                    "responses": {"200": _json("Key"), **_errors(401, 404)},
                },
                "patch": {
                    "summary": "Change models, limits, budget, expires_at, metadata, blocked",
                    "requestBody": _json("KeyUpdate"),
                    "responses": {"200": _json("Key"), **_errors(400, 401, 404, 409, 503)},
                },
                "delete": {
                    "summary": "Revoke: the secret stops working on every replica",
                    "responses": {"200": _json("Key"), **_errors(401, 404, 409, 503)},
                },
            },
            "/admin/keys/{id}/rotate": {
                "parameters": [key_id],
                "post": {
                    "summary": "A new secret; the old one works for grace_seconds more",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "grace_seconds": {
                                            "type": "number",
                                            "minimum": 0,
                                            "maximum": 2592000,
                                        }
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _json("KeyWithSecret"),
                        **_errors(400, 401, 404, 409, 503),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Key": _KEY,
                "KeyWithSecret": _KEY_WITH_SECRET,
                "KeyCreate": {
                    "type": "object",
                    "required": ["id"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"},
                        "models": _MODELS,
                        "limits": _LIMITS,
                        "budget": _BUDGET,
                        "expires_at": _TIME,
                        "metadata": {"type": "object"},
                    },
                },
                "KeyUpdate": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "models": _MODELS,
                        "limits": _LIMITS,
                        "budget": _BUDGET,
                        "expires_at": _TIME,
                        "metadata": {"type": "object"},
                        "blocked": {"type": "boolean"},
                    },
                },
                "Error": _ERROR,
            },
        },
    }
