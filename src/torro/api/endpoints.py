"""Endpoints declared as data: what each takes, needs and answers.

An :class:`Endpoint` names its method and path, its handler, the
pydantic models of its body, query and path parameters and of its
reply, the error statuses it may answer, and the token it needs. From
that, :func:`route` builds the Starlette route, and torro.api.openapi
the OpenAPI document: the two cannot disagree.

A request is handled in this order, each step answering on its own:

1. the caller: 401 or 403 (see torro.api.auth), on the event loop;
2. the body: 400 when it is not JSON, 422 when it does not fit its
   model (strict types: ``"1"`` is not an int); the query and path
   parameters: 422;
3. the handler, a plain function run in the thread pool, so that
   opening a key or deriving one never holds up the event loop. It
   returns a model (200) or a response of its own.
"""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from torro.api.auth import Authenticator, Caller
from torro.api.errors import ApiError
from torro.api.service import DaemonService


# Who may call an endpoint.
PUBLIC = "public"
READ = "read"
FULL = "full"
# Public, with more for a valid token; a wrong token is refused.
OPTIONAL = "optional"


@dataclasses.dataclass(frozen=True)
class Call:
    """What a handler gets: the daemon, the caller and the parsed input.

    :param caller: None on a public call.
    :param body: an instance of the endpoint's body model, or None.
    :param query: an instance of its query model, or None.
    :param path: an instance of its path model, or None.
    """

    service: DaemonService
    caller: Caller | None
    body: Any
    query: Any
    path: Any


Handler = Callable[[Call], BaseModel | Response]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One operation of the API.

    :param method: GET or POST.
    :param path: the path, with ``{name}`` for a path parameter.
    :param handler: returns the reply model (200), or a response.
    :param reply: the model of a 200 reply; None for a response of the
        handler's own (see ``media_type``).
    :param access: :data:`PUBLIC`, :data:`OPTIONAL`, :data:`READ` or
        :data:`FULL`.
    :param body: the model of the JSON body, if the endpoint takes one.
    :param query: the model of the query parameters, if any.
    :param path_model: the model of the path parameters, if any.
    :param errors: the error statuses the endpoint may answer, each with
        the error body; 401 and 403 are added for a token, 400, 413 and
        422 for a body, 422 for parameters.
    :param replies: other statuses answered with a model of their own.
    :param media_type: the type of a reply that is not JSON.
    :param tag: the group of the endpoint in the document.
    """

    method: str
    path: str
    handler: Handler
    reply: type[BaseModel] | None
    access: str = PUBLIC
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_model: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    replies: dict[int, type[BaseModel]] = dataclasses.field(
        default_factory=dict
    )
    media_type: str = "application/json"
    tag: str = "daemon"

    @property
    def error_statuses(self) -> list[int]:
        statuses = set(self.errors)
        if self.access in (READ, FULL, OPTIONAL):
            statuses.update((401, 403))
        if self.body is not None:
            statuses.update((400, 413, 422))
        if self.query is not None or self.path_model is not None:
            statuses.add(422)
        return sorted(statuses - set(self.replies))


def route(endpoint: Endpoint) -> Route:
    """Return the Starlette route that serves ``endpoint``."""

    async def serve(request: Request) -> Response:
        service = request.app.state.service
        caller = _caller(request, endpoint)
        body = None
        if endpoint.body is not None:
            body = _parse(endpoint.body, await _json_body(request))
        query = None
        if endpoint.query is not None:
            query = _parse(endpoint.query, dict(request.query_params))
        path = None
        if endpoint.path_model is not None:
            path = _parse(endpoint.path_model, dict(request.path_params))
        call = Call(service, caller, body, query, path)
        reply = await run_in_threadpool(endpoint.handler, call)
        if not isinstance(reply, Response):
            reply = JSONResponse(
                reply.model_dump(mode="json", exclude_unset=True)
            )
        # Replies may hold keys, and are of the moment: no cache keeps one.
        reply.headers["Cache-Control"] = "no-store"
        return reply

    return Route(
        endpoint.path,
        serve,
        methods=[endpoint.method],
        name=endpoint.handler.__name__,
    )


def _caller(request: Request, endpoint: Endpoint) -> Caller | None:
    authenticator = request.app.state.authenticator
    assert isinstance(authenticator, Authenticator)
    access = endpoint.access
    if access == PUBLIC:
        return None
    if access == OPTIONAL:
        if "authorization" not in request.headers:
            return None
        access = READ
    return authenticator.identify(request, access, endpoint.path)


async def _json_body(request: Request) -> Any:
    data = await request.body()
    if not data.strip():
        raise ApiError(
            400, "the body is empty: send a JSON object", "malformed_json"
        )
    try:
        # strictly UTF-8 (RFC 8259): json.loads on bytes would also take
        # UTF-16 and UTF-32, and surrogates encoded in UTF-8
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ApiError(
            400, "the body is not valid JSON", "malformed_json"
        ) from None


def _parse(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc)) from None


def validation_message(error: ValidationError) -> str:
    """Describe the first problem of a validation error in one line.

    The field is named, never its value; a field the endpoint does not
    take is not named either, since its name came from the client.
    """
    problems = error.errors(include_url=False, include_input=False)
    if not problems:
        return "the request is not valid"
    first = problems[0]
    kind = first.get("type", "")
    location = [str(part) for part in first.get("loc", ())]
    if kind == "extra_forbidden":
        return "the request has a field this endpoint does not take"
    if not location:
        return "the body must be a JSON object"
    message = str(first.get("msg", "is not valid"))
    message = message[:1].lower() + message[1:]
    return f"{'.'.join(location)}: {message}"
