"""Ids of what a trainer publishes: derived from the event that caused it, so a job
run again publishes the same ids (and is recorded once)."""

from __future__ import annotations

from schemas.base import derived_id as base_derived_id


def derived_id(*parts: object) -> str:
    """A stable event id for a result, so a re-run job publishes the same ids."""
    return base_derived_id("t-", *parts)
