"""The API's OpenAPI 3.1 description, served at ``/api/openapi.json``.

Written out rather than generated: the API is small, and a test checks that this document and
the app's routes name the same paths and methods, so neither can drift from the other.
"""

from __future__ import annotations

from typing import Any

from daemon.jobs import TASKS, WHISPER_NAMES

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/responses/Error"}
_ID = {
    "name": "recording_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{20}$"},
}
_CALL = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,20}(-[0-9]{1,3})?$"},
}
_PEER = {
    "name": "peer_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The full peer id (52 base32 characters).",
}
_CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Required with a session cookie; not with a bearer token.",
}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _get(
    summary: str, response: dict[str, Any], parameters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters or [],
            "responses": {"200": response, "401": _ERROR, "404": _ERROR},
        }
    }


def openapi_document() -> dict[str, Any]:
    recording = {"$ref": "#/components/schemas/Recording"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "parley node",
            "version": "1",
            "description": (
                "The node's HTTP API. Log in with the token from `parley web` "
                "(bearer header, or the session cookie from /login)."
            ),
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/api/openapi.json": _get("This document.", _json("OpenAPI 3.1")),
            "/api/status": _get("The node's status (as `parley status`).", _json("status")),
            "/api/peers": _get(
                "Known peers with trust and presence.",
                _json("peers", {"type": "array", "items": {"type": "object"}}),
            ),
            "/api/peers/{peer_id}/trust": {
                "post": {
                    "summary": "Trust a peer.",
                    "parameters": [_PEER, _CSRF],
                    "responses": {
                        "200": _json("the peer"),
                        "401": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/api/peers/{peer_id}/untrust": {
                "post": {
                    "summary": "Stop trusting a peer.",
                    "parameters": [_PEER, _CSRF],
                    "responses": {
                        "200": _json("the peer"),
                        "401": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/api/rounds": _get(
                "Recent FL rounds, newest first.",
                _json("rounds", {"type": "array", "items": {"type": "object"}}),
                [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    }
                ],
            ),
            "/api/calls": _get(
                "Live and past calls.",
                _json(
                    "calls",
                    {
                        "type": "object",
                        "properties": {"live": {"type": "array"}, "past": {"type": "array"}},
                    },
                ),
            ),
            "/api/calls/{call_id}": _get(
                "One call: languages, latency, tracks.", _json("call"), [_CALL]
            ),
            "/api/calls/{call_id}/events": _get(
                (
                    "Server-sent events of a call: `started`, `caption` (partial and final, "
                    "both languages, latency_s), `ended`."
                ),
                {
                    "description": "event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                [_CALL],
            ),
            "/api/calls/{call_id}/captions": _get(
                "A call's track.",
                {
                    "description": "the track",
                    "content": {
                        "text/vtt": {"schema": {"type": "string"}},
                        "application/x-subrip": {"schema": {"type": "string"}},
                    },
                },
                [
                    _CALL,
                    {"name": "lang", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"enum": ["vtt", "srt"]}},
                ],
            ),
            "/api/calls/{call_id}/audio": _get(
                "The speech synthesized for a call (WAV).",
                {"description": "audio", "content": {"audio/wav": {}}},
                [_CALL],
            ),
            "/api/recordings": {
                "get": {
                    "summary": "Recordings, newest first, paged.",
                    "parameters": [
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            "a page",
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": recording},
                                    "total": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                },
                            },
                        ),
                        "401": _ERROR,
                    },
                },
                "post": {
                    "summary": (
                        "Upload a recording (multipart: `file`, optional `to` = target "
                        "languages); its caption job is queued."
                    ),
                    "parameters": [_CSRF],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "to": {
                                            "type": "string",
                                            "description": "comma-separated language tags",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("the recording", recording),
                        "400": _ERROR,
                        "401": _ERROR,
                        "403": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "422": _ERROR,
                    },
                },
            },
            "/api/models": _get(
                "Whisper models a regeneration may name ('default' is the node's own).",
                _json("models", {"type": "object", "properties": {"models": {"type": "array"}}}),
            ),
            "/api/recordings/{recording_id}": _get(
                "One recording: status, progress, languages, failure reason.",
                _json("the recording", recording),
                [_ID],
            ),
            "/api/recordings/{recording_id}/captions": _get(
                "A caption track.",
                {
                    "description": "the track",
                    "content": {
                        "text/vtt": {"schema": {"type": "string"}},
                        "application/x-subrip": {"schema": {"type": "string"}},
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "cues; the source language's carry word times",
                            }
                        },
                    },
                },
                [
                    _ID,
                    {"name": "lang", "in": "query", "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"enum": ["vtt", "srt", "json"]}},
                    {"name": "download", "in": "query", "schema": {"type": "string"}},
                ],
            ),
            "/api/recordings/{recording_id}/captions/status": _get(
                "The caption job's status.", _json("status"), [_ID]
            ),
            "/api/recordings/{recording_id}/captions/regenerate": {
                "post": {
                    "summary": "Caption the recording again (optionally into other languages).",
                    "parameters": [_ID, _CSRF],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "languages": {"type": "array", "items": {"type": "string"}},
                                        "model": {
                                            "type": "string",
                                            "description": "a Whisper model folder's name "
                                            "under <home>/models/whisper/",
                                        },
                                        "whisper": {
                                            "enum": list(WHISPER_NAMES),
                                            "description": "a built-in Whisper (models.whisper "
                                            "names); not with model",
                                        },
                                        "task": {"enum": list(TASKS)},
                                        "language": {
                                            "type": ["string", "null"],
                                            "description": "the spoken language; null: identify it",
                                        },
                                        "skip_silence": {"type": "boolean"},
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json("the recording", recording),
                        "401": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                        "422": _ERROR,
                    },
                }
            },
            "/api/recordings/{recording_id}/media": _get(
                "The media file; answers HTTP Range requests (206).",
                {"description": "media", "content": {"video/*": {}, "audio/*": {}}},
                [_ID],
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "parley_session"},
            },
            "responses": {
                "Error": _json(
                    "an error",
                    {
                        "type": "object",
                        "properties": {
                            "error": {
                                "type": "object",
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        },
                    },
                )
            },
            "schemas": {
                "Recording": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "created_at": {"type": "number"},
                        "size_bytes": {"type": "integer"},
                        "media_type": {"type": "string"},
                        "duration_s": {"type": "number"},
                        "has_video": {"type": "boolean"},
                        "requested_languages": {"type": "array", "items": {"type": "string"}},
                        "model": {"type": "string"},
                        "whisper": {
                            "type": ["string", "null"],
                            "description": "the built-in Whisper the job used, if one was named",
                        },
                        "task": {"enum": list(TASKS)},
                        "spoken_language": {
                            "type": ["string", "null"],
                            "description": "the spoken language asked for (null: identified)",
                        },
                        "skip_silence": {"type": "boolean"},
                        "job_id": {"type": ["string", "null"]},
                        "status": {"enum": ["pending", "processing", "ready", "failed"]},
                        "progress": {"type": ["number", "null"]},
                        "stage": {"type": ["string", "null"]},
                        "language": {
                            "type": ["string", "null"],
                            "description": "detected language",
                        },
                        "languages": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "tracks available",
                        },
                        "reason": {"type": ["string", "null"], "description": "why the job failed"},
                    },
                }
            },
        },
    }
