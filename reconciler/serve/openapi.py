"""The API described for `/openapi.json` (hand-written: the API is small and its contract matters more than its
code).
"""
from __future__ import annotations

from typing import Any

from reconciler.serve.publication import MAX_WAIT_SECONDS

_JSON = "application/json"


_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ERROR}}}


#: A JSON object body.
_OBJECT = {_JSON: {"schema": {"type": "object"}}}


def _tagged(description: str, content: dict[str, Any], bad: str, missing: str) -> dict[str, Any]:
    """The responses of a GET answered with an ETag: 200 with it, 304 for the client's current copy, 400, 404."""
    return {
        "200": {"description": description, "headers": {"ETag": {"schema": {"type": "string"}}}, "content": content},
        "304": {"description": "The client's copy is current"},
        "400": _err(bad),
        "404": _err(missing),
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Palisade reconciler API",
        "version": "1",
        "description": "Signed policy bundles for node agents, reconcile status and metrics. "
                       "Bundles and the index are verified by agents with a pinned Ed25519 public key; "
                       "this API is only a transport.",
    },
    "paths": {
        "/v1/index": {"get": {
            "summary": "The signed bundle index",
            "description": "The index bytes exactly as stored. Send the ETag back in If-None-Match to get 304 "
                           "when nothing changed; add `wait` to long-poll until a newer index is published.",
            "parameters": [
                {"name": "wait", "in": "query", "required": False,
                 "description": f"Hold the request up to this many seconds (0 < wait <= {MAX_WAIT_SECONDS}) "
                                "while the If-None-Match ETag is current.",
                 "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT_SECONDS}},
                {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": _tagged("The index (schemas/index.schema.json)", _OBJECT, "Invalid wait",
                                 "Nothing has been published yet"),
        }},
        "/v1/bundles/{version}": {"get": {
            "summary": "One bundle, immutable",
            "parameters": [{"name": "version", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 1}}],
            "responses": _tagged("The bundle (schemas/bundle.schema.json); cacheable forever", _OBJECT,
                                 "The version is not a positive integer",
                                 "The current index does not list this version"),
        }},
        "/v1/objects/{sha256}": {"get": {
            "summary": "One CO-RE object, by the sha256 of its bytes; immutable",
            "description": "The objects a bundle lists (its `objects` member: source digest, sha256, size); the "
                           "agent checks the bytes against the signed digest before loading them.",
            "parameters": [{"name": "sha256", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "responses": _tagged("The object (ELF); cacheable forever",
                                 {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                                 "Not a sha256 hex digest", "The store holds no such object"),
        }},
        "/v1/agents/{id}/heartbeat": {"post": {
            "summary": "An agent's heartbeat",
            "description": "Sensor id and labels, the bundle version it enforces and its stage, per-policy status, "
                           "drift, counters and the interval's observations (schemas/heartbeat.schema.json). "
                           "Stored in the fleet table of the state directory (reconciler/fleet.py).",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": _OBJECT},
            "responses": {
                "204": {"description": "Stored"},
                "400": _err("Malformed JSON, a sensor id that is not valid or does not match the body, "
                            "or a member of the wrong shape"),
                "413": _err("Larger than 1 MiB"),
            },
        }},
        "/v1/hooks/{name}": {"post": {
            "summary": "A push webhook from GitHub, GitLab or a generic HMAC sender",
            "description": "Receivers are configured with `palisade serve --hooks FILE` (kind: Receivers). A push on "
                           "the tracked branch whose sender proves it holds the receiver's secret makes the server "
                           "fetch and reconcile at once (202). A verified delivery that asks for nothing (a ping, "
                           "another branch, a tag) is answered 200 with the reason. github: `X-Hub-Signature-256` "
                           "(HMAC-SHA256 of the body), `X-GitHub-Event`, `X-GitHub-Delivery`. gitlab: "
                           "`X-Gitlab-Token`, `X-Gitlab-Event`, `Idempotency-Key` or `X-Gitlab-Event-UUID`. generic: "
                           "`X-Palisade-Signature: sha256=HMAC-SHA256(secret, \"<timestamp>.<delivery>.\" + body)`, "
                           "`X-Palisade-Timestamp` (unix seconds), `X-Palisade-Delivery`, `X-Palisade-Event`; "
                           "body `{ref, after}`. Every refusal is counted in "
                           "`palisade_webhook_refusals_total{receiver, reason}`.",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}],
            "requestBody": {"required": True, "content": {
                _JSON: {"schema": {"type": "object", "required": ["ref"],
                                   "properties": {"ref": {"type": "string"}, "after": {"type": "string"}}}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object",
                                                                 "properties": {"payload": {"type": "string"}}}},
            }},
            "responses": {
                "202": {"description": "A push on the tracked branch: fetching and reconciling now",
                        "content": _OBJECT},
                "200": {"description": "Verified, nothing to do: `ignored` is not_a_push, other_ref or deleted",
                        "content": _OBJECT},
                "400": _err("A header or the payload is missing or malformed"),
                "401": _err("The signature or token is missing or does not match"),
                "404": _err("No receiver of this name"),
                "409": _err("A delivery id or body seen before, or (generic) a timestamp outside maxSkew"),
                "413": _err("Larger than the configured maxBodyBytes (default 1 MiB)"),
                "429": {"description": "The receiver's token bucket is empty; retry after `Retry-After` seconds",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        "content": {_JSON: {"schema": _ERROR}}},
                "503": _err("This server stands by (--leader-elect): send webhooks to the leader"),
            },
        }},
        "/v1/status": {"get": {
            "summary": "Reconcile status",
            "description": "Last accepted and last rejected commit (with findings), published versions, "
                           "the served index's serial and expiry, the last reconcile time and errors "
                           "such as a refused history rewrite; `role` (`leader` or `standby`), `roleSince`, and on "
                           "a standby `leader.pid`, the process holding the state directory.",
            "responses": {"200": {"description": "Status", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "role": {"type": ["string", "null"], "enum": ["leader", "standby", None]},
                    "roleSince": {"type": ["string", "null"], "format": "date-time"},
                    "leader": {"type": "object", "properties": {"pid": {"type": ["integer", "null"]}}},
                    "served": {"type": ["object", "null"]},
                },
            }}}}},
        }},
        "/v1/agents": {"get": {
            "summary": "The fleet: every agent's last heartbeat",
            "responses": {"200": {"description": "`{agents: [...]}`",
                                  "content": _OBJECT}},
        }},
        "/v1/observations": {"get": {
            "summary": "Stored observations, summed per sensor, policy, binary, workload, parent and action",
            "parameters": [
                *({"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                  for n in ("policy", "sensor", "binary", "workload")),
                *({"name": n, "in": "query", "required": False, "description": "RFC 3339 time",
                   "schema": {"type": "string", "format": "date-time"}} for n in ("since", "until")),
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
            ],
            "responses": {"200": {"description": "`{observations: [...]}`",
                                  "content": _OBJECT},
                          "400": _err("A malformed time or limit")},
        }},
        "/healthz": {"get": {
            "summary": "Liveness and readiness for probes; needs no token",
            "responses": {"200": {"description": "`{status: ok}`", "content": _OBJECT}},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This description",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": _OBJECT}},
        }},
    },
    "components": {"schemas": {"Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }}},
}
