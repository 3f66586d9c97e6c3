"""Typed AAR events: the envelope, one payload module per domain, one registry.

Importing this package registers every payload model.
"""

from . import agent, artifact, experiment, forum, gateway, idea, integrity, recorder, scoring, session, workspace
from .base import Domain, EventType, Payload, new_id, new_session_id
from .envelope import Event, Rejection, decode, subject_for
from .registry import REGISTRY, event, upcaster

__all__ = [
    "REGISTRY",
    "Domain",
    "Event",
    "EventType",
    "Payload",
    "Rejection",
    "agent",
    "artifact",
    "decode",
    "event",
    "experiment",
    "forum",
    "gateway",
    "idea",
    "integrity",
    "new_id",
    "new_session_id",
    "recorder",
    "scoring",
    "session",
    "subject_for",
    "upcaster",
    "workspace",
]
