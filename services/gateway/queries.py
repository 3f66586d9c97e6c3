"""The gateway's query (``aarq.gateway.health``)."""

from __future__ import annotations

from pydantic import BaseModel

from bus.query import Empty, Query


class GatewayHealth(BaseModel):
    forwarded: int
    rejected_forwarded: int
    refused: dict[str, int]  # by reason
    identities: int  # identities with a publish budget in use
    pid: int


HEALTH = Query("gateway", "health", Empty, GatewayHealth)
