"""The read API over HTTP (FastAPI): four endpoints shaped after PI Web API's.

Every answer names the guard's decision on its request, in its body (``decision``) and in
the ``X-Converge-Decision`` header; a CSV body holds only the records, exactly as
``converge query --format csv`` writes them, so there the header alone names it. The
OpenAPI document is served at ``/openapi.json`` (and kept in docs/openapi.json).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from http import HTTPStatus
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.access.guard import Decision
from engine.api import models, params
from engine.api.server import CERTIFICATE
from engine.api.service import Exchange, Refused, Service
from engine.durations import format_duration
from engine.errors import ConvergeError
from engine.sign.leaf import instant

HEADER = "X-Converge-Decision"
DESCRIPTION = """Records of an evidence store, read through Converge's access guard.

Authenticate with `Authorization: Bearer TOKEN` (`converge principals token`) or a TLS
client certificate listed under the principal's `certificates`. Every request of an
authenticated caller is one guard decision and one `access.decision` audit entry, allowed
or denied; every answer names it (`decision` in the body, the `X-Converge-Decision`
header). A request that is not authenticated (401) is refused before the guard: no
decision (`decision` is null), no audit entry; the server counts and logs it. Times are
RFC 3339 instants or dates; a range is `[start, end)`, at most 366 days, by default the day
before `end` (now). See docs/access.md."""

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": models.Refusal, "description": text}
    for status, text in (
        (400, "A request that cannot be answered as asked (names, times, parameters)."),
        (401, "No credentials, a wrong or expired token, a principal no longer listed."),
        (403, "The guard denied the read: the reason and the decision id are in the body."),
        (414, f"A query string longer than {params.MAX_QUERY} bytes."),
    )
}


def _parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string query parameter, for the OpenAPI document (the endpoints read and
    check their parameters themselves: a bad one is a refusal with a decision, not a 422)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


RANGE = [
    _parameter("start", "From this instant (included); default: a day before end."),
    _parameter("end", "To this instant (excluded); default: now."),
]


def make_app(service: Service | None = None) -> FastAPI:
    """The read API over ``service`` (none: the app only describes itself, for its OpenAPI
    document)."""
    app = FastAPI(
        title="Converge read API",
        version=version("converge"),
        description=DESCRIPTION,
        docs_url=None,  # the interactive pages load scripts from the internet: not on a plant
        redoc_url=None,
    )
    app.state.service = service
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(ConvergeError)
    def unavailable(request: Request, exc: ConvergeError) -> Response:
        """The store cannot be read or written (the decision could not be recorded, so
        nothing was read)."""
        body = {"status": 503, "error": "Service Unavailable", "message": str(exc)}
        return JSONResponse(body, status_code=503)

    @app.get(
        "/v1/points",
        summary="The points the caller may read",
        response_model=None,
        responses={200: {"model": models.Points}, **ERRORS},
        openapi_extra={"parameters": [_parameter("device", "Only this device's points.")]},
    )
    def points(request: Request) -> Response:
        exchange = _exchange(request)
        outcome = exchange.points(request.query_params.multi_items())
        if isinstance(outcome, Refused):
            return _refused(outcome)
        decision, listed = outcome
        body = {"decision": decision.id, "principal": exchange.caller.principal, "points": listed}
        return _json(body, decision)

    @app.get(
        "/v1/points/{device}/{point}/recorded",
        summary="A point's records over a time range, streamed as JSON or CSV",
        response_model=None,
        responses={
            200: {
                "model": models.Recorded,
                "content": {"text/csv": {"schema": {"type": "string"}}},
                "description": "The readings and gap records, in batch order.",
            },
            **ERRORS,
        },
        openapi_extra={
            "parameters": [
                *RANGE,
                _parameter("format", "json or csv; default: text/csv in Accept, else json."),
            ]
        },
    )
    def recorded(request: Request, device: str, point: str) -> Response:
        exchange = _exchange(request)
        given = request.query_params.multi_items()
        outcome = exchange.recorded(device, point, given, request.headers.get("accept"))
        if isinstance(outcome, Refused):
            return _refused(outcome)
        decision, span, form = outcome
        headers = {HEADER: decision.id}
        if form == "csv":
            csv = exchange.csv(decision, span)
            return StreamingResponse(csv, media_type="text/csv; charset=utf-8", headers=headers)
        head = json.dumps(
            {
                "decision": decision.id,
                "device": device,
                "point": point,
                "start": instant(span.start),
                "end": instant(span.end),
            },
            ensure_ascii=False,
        )[:-1]
        items = exchange.json_items(decision, span, head + ',"items":[')
        return StreamingResponse(items, media_type="application/json", headers=headers)

    @app.get(
        "/v1/points/{device}/{point}/summary",
        summary="A point's count, min, max, mean and gaps per interval",
        response_model=None,
        responses={200: {"model": models.Summary}, **ERRORS},
        openapi_extra={
            "parameters": [
                *RANGE,
                _parameter("interval", "A duration (15m, 1h, 1d); default: the whole range."),
            ]
        },
    )
    def summary(request: Request, device: str, point: str) -> Response:
        exchange = _exchange(request)
        outcome = exchange.summarised(device, point, request.query_params.multi_items())
        if isinstance(outcome, Refused):
            return _refused(outcome)
        decision, span, length = outcome
        body = {
            "decision": decision.id,
            "device": device,
            "point": point,
            "start": instant(span.start),
            "end": instant(span.end),
            "interval": format_duration(length // timedelta(milliseconds=1)),
            "items": exchange.summary(decision, span, length),
        }
        return _json(body, decision)

    @app.get(
        "/v1/records/{batch}/{position}/proof",
        summary="One record, its inclusion proof, its signed batch and the latest checkpoint",
        response_model=None,
        responses={
            200: {"model": models.Proof},
            **{status: text for status, text in ERRORS.items() if status != 403},
            404: {
                "model": models.Refusal,
                "description": "No record the caller may read is stored there: none is, or "
                "the guard denied it (one answer for both, naming no device or point).",
            },
        },
    )
    def proof(request: Request, batch: str, position: str) -> Response:
        exchange = _exchange(request)
        outcome = exchange.proof(batch, position, request.query_params.multi_items())
        if isinstance(outcome, Refused):
            return _refused(outcome)
        decision, found = outcome
        return _json({"decision": decision.id, **found}, decision)

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without its 422 answers: the endpoints check their parameters
    themselves, and refuse a bad one with 400 and a decision."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in schema["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _exchange(request: Request) -> Exchange:
    """The request's exchange: its credentials, where it came from, its query's length."""
    service: Service = request.app.state.service
    client = request.client
    via = {
        "api": f"{request.method} {params.clipped(request.url.path, params.MAX_PATH)}",
        "client": f"{client.host}:{client.port}" if client else "unknown",
    }
    state: Mapping[str, Any] = request.scope.get("state") or {}
    return service.exchange(
        request.headers.get("authorization"),
        state.get(CERTIFICATE),
        via,
        len(request.scope.get("query_string", b"")),
    )


def _json(body: dict[str, Any], decision: Decision | None, status: int = 200) -> Response:
    headers = {HEADER: decision.id} if decision is not None else {}
    return JSONResponse(body, status_code=status, headers=headers)


def _refused(refused: Refused) -> Response:
    """An answer without data: the status, why, and each point with the guard's reason (none
    when the request was refused before the guard)."""
    decision = refused.decision
    shown = [] if refused.hidden or decision is None else decision.points
    body = {
        "decision": decision.id if decision is not None else None,
        "status": refused.status,
        "error": HTTPStatus(refused.status).phrase,
        "message": refused.message,
        "points": [
            {"device": p.device, "point": p.point, "allowed": p.allowed, "reason": p.reason}
            for p in shown
        ],
    }
    response = _json(body, decision, refused.status)
    if refused.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="converge"'
    return response
