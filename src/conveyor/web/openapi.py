"""The OpenAPI 3.1 document of the HTTP API, built from the route table (``routes.ROUTES``)."""

from __future__ import annotations

import re
from typing import Any

from ..brokers import STATES
from .handlers import FILTER_STATES
from .routes import ROUTES, Route

NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
STRING_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}

ERROR = {"type": ["object", "null"], "properties": {"type": STRING_OR_NULL, "message": STRING_OR_NULL,
                                                      "traceback": STRING_OR_NULL}}
JOB_SUMMARY = {
    "type": "object",
    "required": ["id", "task", "queue", "state", "attempts", "max_attempts", "created_at"],
    "properties": {
        "id": {"type": "string"}, "task": {"type": "string"}, "queue": {"type": "string"},
        "state": {"type": "string", "enum": list(STATES)}, "priority": {"type": "integer"},
        "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"}, "created_at": {"type": "number"},
        "run_at": NUMBER_OR_NULL, "started_at": NUMBER_OR_NULL, "finished_at": NUMBER_OR_NULL,
        "progress": NUMBER_OR_NULL, "progress_message": STRING_OR_NULL, "cancel_requested": {"type": "boolean"},
        "error": ERROR,
        "reserved": {"type": "boolean",
                     "description": "Running in the store, but the task has not started: a worker holds it."},
        "display_state": {"type": "string",
                          "description": "The state as people should read it: `reserved`, `failed, retry at "
                                         "HH:MM:SS` (UTC) for a failed attempt waiting for its retry, else `state`."},
    },
}
SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object", "required": ["title", "status", "detail"],
        "description": "An error (RFC 9457); field names the failing input.",
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"}, "field": {"type": "string"},
                       "errors": {"type": "array", "items": {"type": "object"}},
                       "known": {"type": "array", "items": {"type": "string"},
                                 "description": "Unknown task: the registered task names."},
                       "suggestion": {"type": ["string", "null"],
                                      "description": "Unknown task: the nearest registered name, if any."}},
    },
    "EnqueueRequest": {
        "type": "object", "required": ["task"], "additionalProperties": False,
        "properties": {
            "task": {"type": "string", "description": "Registered task name."},
            "args": {"type": "array", "description": "Positional arguments."},
            "kwargs": {"type": "object", "description": "Keyword arguments."},
            "queue": {"type": "string"}, "priority": {"type": "integer", "description": "Higher runs first."},
            "delay": {"type": "number", "minimum": 0, "description": "Seconds before it may run."},
            "key": {"type": "string", "description": "Unique among active jobs."},
        },
    },
    "JobSummary": JOB_SUMMARY,
    "Job": {
        "allOf": [{"$ref": "#/components/schemas/JobSummary"}],
        "type": "object",
        "properties": {
            "key": STRING_OR_NULL, "timeout": NUMBER_OR_NULL, "updated_at": NUMBER_OR_NULL,
            "lease_until": NUMBER_OR_NULL, "worker": STRING_OR_NULL, "args": {}, "kwargs": {}, "result": {},
            "history": {"type": "array", "items": {"type": "object"}},
        },
    },
    "JobPage": {
        "type": "object", "required": ["jobs", "cursor"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobSummary"}},
                       "cursor": STRING_OR_NULL},
    },
    "BulkRequest": {
        "type": "object", "required": ["action"],
        "description": "Give ids, or a filter with at least one criterion.",
        "properties": {
            "action": {"type": "string", "enum": ["retry", "cancel", "delete"]},
            "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 10000},
            "filter": {"type": "object", "properties": {
                "state": {"type": "string", "enum": list(FILTER_STATES)}, "queue": {"type": "string"},
                "task": {"type": "string"}, "search": {"type": "string"},
                "since": {"type": ["number", "string"]}, "until": {"type": ["number", "string"]}}},
        },
    },
    "BulkResult": {
        "type": "object", "required": ["action", "matched", "changed", "skipped", "more"],
        "properties": {"action": {"type": "string"}, "matched": {"type": "integer"}, "changed": {"type": "integer"},
                       "skipped": {"type": "integer"}, "more": {"type": "boolean"},
                       "skipped_sample": {"type": "array", "items": {"type": "object"}}},
    },
    "Deleted": {"type": "object", "required": ["id", "deleted"],
                "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}}},
    "Queue": {
        "type": "object", "required": ["name", "paused", "counts", "depth"],
        "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"}, "depth": {"type": "integer"},
                       "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                                  "description": "Jobs by state; `reserved` is the part of `running` that a "
                                                 "worker holds but has not started."}},
    },
    "QueueList": {"type": "object", "required": ["queues"],
                  "properties": {"queues": {"type": "array", "items": {"$ref": "#/components/schemas/Queue"}}}},
    "QueueState": {"type": "object", "required": ["name", "paused"],
                   "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"}}},
    "PurgeRequest": {"type": "object", "properties": {"states": {
        "type": "array", "items": {"type": "string", "enum": [s for s in STATES if s != "running"]}}}},
    "Purged": {"type": "object", "required": ["name", "deleted"],
               "properties": {"name": {"type": "string"}, "deleted": {"type": "integer"}}},
    "Worker": {
        "type": "object", "required": ["id", "hostname", "pid"],
        "properties": {"id": {"type": "string"}, "hostname": {"type": "string"}, "pid": {"type": "integer"},
                       "queues": {"type": "array", "items": {"type": "string"}}, "pool": {"type": "string"},
                       "supervisor": STRING_OR_NULL, "current": {"type": "array", "items": {"type": "string"}},
                       "rss": {"type": "integer"}, "processed": {"type": "integer"}, "failed": {"type": "integer"},
                       "started_at": {"type": "number"}, "last_seen": {"type": "number"},
                       "uptime": {"type": "number"}},
    },
    "WorkerList": {"type": "object", "required": ["workers"],
                   "properties": {"workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}}},
    "Stats": {
        "type": "object", "required": ["since", "until", "bucket", "series"],
        "properties": {
            "since": {"type": "number"}, "until": {"type": "number"}, "bucket": {"type": "integer"},
            "series": {"type": "array", "items": {
                "type": "object", "required": ["queue", "bucket", "succeeded", "failed"],
                "properties": {"queue": {"type": "string"}, "bucket": {"type": "number"},
                               "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
                               "run_mean": NUMBER_OR_NULL, "run_p95": NUMBER_OR_NULL, "wait_mean": NUMBER_OR_NULL}}},
            "reserved": {"type": "object", "additionalProperties": {"type": "integer"},
                         "description": "Now, per queue: running jobs a worker holds that have not started."},
        },
    },
}
DESCRIPTIONS = {200: "OK", 201: "Created", 400: "Malformed request", 401: "Missing or wrong credentials",
                403: "CSRF token or Origin refused", 404: "Unknown task, job or route",
                409: "Conflicts with the job's state", 413: "Body or arguments over the size limit",
                422: "Invalid input (field names it)"}
RAW_CONTENT = {"api_events": "text/event-stream", "api_openapi": "application/json",
               "metrics": "text/plain"}


def openapi_path(rule: str) -> str:
    """``/api/jobs/<id>`` → ``/api/jobs/{id}``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def documented(route: Route) -> bool:
    return route.kind in ("api", "metrics")


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.endpoint, "summary": route.summary,
                          "tags": ["metrics" if route.kind == "metrics" else route.rule.split("/")[2]]}
    params = []
    for p in route.params:
        schema: dict[str, Any] = {"type": p.type}
        if p.enum:
            schema["enum"] = list(p.enum)
        if p.type == "integer" and p.name == "limit":
            schema.update(minimum=1, maximum=500)
        if p.type == "integer" and p.name == "bucket":
            schema.update(minimum=1, maximum=86400)
        params.append({"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                       "description": p.description, "schema": schema})
    if params:
        op["parameters"] = params
    if route.body:
        schema_ref = {"$ref": f"#/components/schemas/{route.body}"}
        op["requestBody"] = {"required": route.body in ("EnqueueRequest", "BulkRequest"),
                             "content": {"application/json": {"schema": schema_ref}}}
    responses = {}
    for status, schema_name in sorted(route.responses.items()):
        entry: dict[str, Any] = {"description": DESCRIPTIONS.get(status, "")}
        if schema_name is not None:
            media = "application/problem+json" if schema_name == "Problem" else "application/json"
            entry["content"] = {media: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}
        else:
            entry["content"] = {RAW_CONTENT.get(route.endpoint, "application/json"): {"schema": {}}}
        responses[str(status)] = entry
    op["responses"] = responses
    return op


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document (paths relative to where the app is mounted)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        if documented(route):
            paths.setdefault(openapi_path(route.rule), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Conveyor", "version": version,
                 "description": "Jobs, queues and workers of a Conveyor app. Authenticate with "
                                "`Authorization: Bearer <token>`."},
        "servers": [{"url": "."}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
