"""The orchestrator's query (``aarq.orchestrator.assignment``): an agent's slot."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bus.query import Query
from services.agents.assignment import Assignment


class AssignmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str = Field(default="auto", max_length=128)  # "auto": the asker's own slot (admin: the next free one)


ASSIGNMENT = Query("orchestrator", "assignment", AssignmentRequest, Assignment)
