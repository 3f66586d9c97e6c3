"""One registry from event ``type`` to payload model, plus upcasters.

An upcaster turns the payload dict of an older ``schema_version`` into the
next version's shape; :func:`upcast` applies them in order until the payload
is at the registered (current) version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import EventType, Payload

P = TypeVar("P", bound=type[Payload])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

REGISTRY: dict[EventType, type[Payload]] = {}
UPCASTERS: dict[tuple[EventType, int], Upcaster] = {}


class UnknownEventType(LookupError):
    pass


class UnsupportedVersion(ValueError):
    pass


def event(event_type: EventType, *, version: int = 1) -> Callable[[P], P]:
    """Class decorator registering a payload model for ``event_type``."""

    def register(cls: P) -> P:
        if event_type in REGISTRY and REGISTRY[event_type] is not cls:
            raise ValueError(f"{event_type} registered twice")
        cls.event_type = event_type
        cls.schema_version = version
        REGISTRY[event_type] = cls
        return cls

    return register


def upcaster(event_type: EventType, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function lifting a payload from ``from_version`` to ``from_version + 1``."""

    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def payload_model(event_type: str) -> type[Payload]:
    try:
        return REGISTRY[EventType(event_type)]
    except ValueError:
        raise UnknownEventType(f"unknown event type {event_type!r}") from None
    except KeyError:  # pragma: no cover - every EventType is registered (tested)
        raise UnknownEventType(f"no payload model for {event_type!r}") from None


def upcast(event_type: EventType, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    current = REGISTRY[event_type].schema_version
    if version > current:
        raise UnsupportedVersion(
            f"{event_type} schema_version {version} is newer than this build knows ({current})"
        )
    while version < current:
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise UnsupportedVersion(f"no upcaster for {event_type} v{version} -> v{version + 1}")
        payload = step(payload)
        version += 1
    return payload
