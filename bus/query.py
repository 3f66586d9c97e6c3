"""Typed queries (request/reply outside the stream, DESIGN.md section 3).

A :class:`Query` names a service's endpoint and its request and response models; the
service and every asker import the same one (``services/<service>/queries.py``), so
both sides agree on the shapes. The service answers with :meth:`bus.Bus.serve` and
:class:`Endpoint` s; an asker calls :meth:`bus.Bus.ask` and gets the response model.

On the wire a request is the request model's JSON on ``aarq.<service>.<name>.<asker>``
and the answer a :class:`QueryReply`. A request that does not validate is answered with
``error_type: "BadRequest"`` and never reaches the handler; neither does a request whose
reply subject is outside the asker's own inbox (:func:`reply_allowed`).

Why not ``nats.micro``: its handlers get a ``micro.Request`` that hides the reply
subject, so a service could not refuse to answer into someone else's inbox (the check
that keeps an agent from aiming the recorder's answer at the stream or the JetStream
API); its ``$SRV.PING|INFO|STATS`` discovery subjects would have to be opened to every
role and tell each of them which services and endpoints exist; and a service must
answer on the subject the permissions name (``aarq.<service>.<name>.<asker>``, the
asker's identity in the last token, guaranteed by the server), where micro endpoints
subscribe to one fixed subject each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
# Requests a service handles at once, and of those, from one asker (admin aside): more
# are answered "Busy" at once, so that no identity can queue up a service's loop or memory.
MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_PER_ASKER = 8

Req = TypeVar("Req", bound=BaseModel)
Res = TypeVar("Res", bound=BaseModel)


class BadRequest(ValueError):
    """A query that cannot be answered as asked; the message says why."""


class Busy(RuntimeError):
    """The service is answering as many requests (of this asker) as it takes at once."""


class QueryReply(BaseModel):
    ok: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None  # "BadRequest", "UnknownQuery" or the handler's exception class


class Empty(BaseModel):
    """A request without fields (``health``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Query(Generic[Req, Res]):
    """One endpoint of one service, with its request and response models."""

    service: str
    name: str
    request: type[Req]
    response: type[Res]
    # How a request is read, when not by the model alone: its exceptions are the reply
    # (the recorder's audits answer AuditRefused, as the file path raises).
    parser: Callable[[bytes], Req] | None = None
    # A larger request is refused unread (parsing 8 MB of JSON holds a service's loop).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def parse(self, data: bytes) -> Req:
        """The request model of ``data``, else BadRequest naming what is wrong."""
        if self.parser is not None:
            return self.parser(data)
        try:
            return self.request.model_validate_json(data or b"{}")
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<request>'}: {err['msg']}" for err in exc.errors()[:10]
            )
            raise BadRequest(f"bad {self.name!r} request: {reasons}") from None

    def answer(self, handler: Callable[[Req, str], Awaitable[Res]]) -> Endpoint[Req, Res]:
        """This query answered by ``handler(request, asker)``; ``asker`` is the identity
        the server guarantees (the subject's last token)."""
        return Endpoint(self, handler)


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[Req, Res]):
    query: Query[Req, Res]
    handler: Callable[[Req, str], Awaitable[Res]]

    async def __call__(self, data: bytes, asker: str) -> Any:
        """The reply's result: the handler's response model as JSON-ready data."""
        if len(data) > self.query.max_request_bytes:
            raise BadRequest(f"a {self.query.name!r} request of {len(data):,} bytes is over its "
                             f"{self.query.max_request_bytes:,}-byte limit")
        result = await self.handler(self.query.parse(data), asker)
        if not isinstance(result, self.query.response):
            raise TypeError(f"{self.query.name} answered a {type(result).__name__}, "
                            f"not a {self.query.response.__name__}")
        return result.model_dump(mode="json")
