"""The NATS/JetStream bus: roles and permissions, the embedded server, the client."""

from .client import Bus, PublishDenied, PublishRefused, PublishTimeout, QueryError, decode_msg, query_subject
from .roles import STREAM, Credentials, Role
from .server import NatsServer
from .settings import BusSettings

__all__ = [
    "STREAM",
    "Bus",
    "BusSettings",
    "Credentials",
    "NatsServer",
    "PublishDenied",
    "PublishRefused",
    "PublishTimeout",
    "QueryError",
    "Role",
    "decode_msg",
    "query_subject",
]
