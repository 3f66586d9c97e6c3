"""The same event id with two different bodies is a recorded conflict, not a silent drop.

"Same body": every envelope field (id, type, schema_version, session_id, source, time,
correlation_id, causation_id) and the payload, as decoded (so key order and whitespace
in the raw JSON do not matter); not where or when it arrived (stream_seq, recorded_at).
The first copy of an id stays in ``events``; a later copy with the same body is
dropped; one with a different body becomes a ``rejected_events`` row whose reason
starts ``conflict:`` and names the id and the stored copy's stream sequence.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bus import Bus
from core.paths import AarHome
from schemas import Event, EventType, decode
from services.recorder.store import EventStore, Recorded

from .conftest import ServiceProcess, recorded_count, wait_until
from .factories import sample_event

pytestmark = pytest.mark.timeout(120)


def _changed(event: Event, **fields: Any) -> Event:
    data = json.loads(event.to_json())
    payload = fields.pop("payload", None)
    data.update(fields)
    if payload:
        data["payload"].update(payload)
    return Event.parse(data)


def _conflicts(store: EventStore) -> dict[int, tuple[str, bytes]]:
    rows = store.query("SELECT stream_seq, reason, raw FROM rejected_events WHERE reason LIKE 'conflict:%' "
                       "ORDER BY stream_seq").rows
    return {r[0]: (r[1], bytes.fromhex(r[2])) for r in rows}


def _events(store: EventStore) -> list[list[Any]]:
    return store.query("SELECT id, stream_seq, source, payload->>'title' FROM events ORDER BY stream_seq").rows


def test_a_different_body_is_a_conflict_and_the_same_body_is_dropped(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.duckdb")
    first = sample_event(EventType.IDEA_PROPOSED, "s-c")
    forged = _changed(first, payload={"title": "a better score, honestly"})
    try:
        store.record([Recorded(first, 1)])
        store.record([Recorded(first, 2)])  # a retried publish past the duplicate window
        store.record([Recorded(forged, 3)])
        assert _events(store) == [[first.id, 1, "test", first.payload.title]]
        conflicts = _conflicts(store)
        assert list(conflicts) == [3]
        reason, raw = conflicts[3]
        assert first.id in reason and "stream_seq 1" in reason and "payload" in reason
        assert json.loads(raw)["payload"]["title"] == "a better score, honestly"
        assert json.loads(raw)["id"] == first.id
        assert store.counts() == {"events": 1, "rejected": 1}
    finally:
        store.close()


def test_repeats_and_conflicts_within_one_batch(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.duckdb")
    a = sample_event(EventType.SCORE_PUBLISHED, "s-c")
    b = _changed(a, payload={"pgr": 0.99})
    other = sample_event(EventType.SCORE_PUBLISHED, "s-c", n=1)
    try:
        moved = store.record([Recorded(a, 1), Recorded(b, 2), Recorded(a, 3), Recorded(b, 4), Recorded(other, 5),
                              Recorded(a, 1)])  # and one message delivered twice in the batch
        assert (moved.events, moved.rejected) == (2, 2)
        assert [r[:2] for r in _events(store)] == [[a.id, 1], [other.id, 5]]
        conflicts = _conflicts(store)
        assert list(conflicts) == [2, 4]
        assert all("stream_seq 1" in reason for reason, _ in conflicts.values())
        assert store.query(f"SELECT payload->>'pgr' FROM events WHERE id = '{a.id}'").rows == [["0.55"]]
    finally:
        store.close()


def test_conflicts_across_moves_and_restarts(tmp_path: Path) -> None:
    db = tmp_path / "events.duckdb"
    a = sample_event(EventType.INTEGRITY_FLAGGED, "s-c")
    late = _changed(a, time=(a.time + timedelta(microseconds=1)).isoformat())  # one µs later: another body
    store = EventStore(db)
    try:
        store.record([Recorded(a, 10)])
    finally:
        store.close()
    store = EventStore(db)  # a new recorder
    try:
        store.record([Recorded(late, 11)])
        store.record([Recorded(a, 12)])  # the same body again: dropped
        store.append([Recorded(late, 11)])  # the conflicting message redelivered: still one conflict
        store.move()
    finally:
        store.close()
    store = EventStore(db)
    try:
        assert [r[:2] for r in _events(store)] == [[a.id, 10]]
        conflicts = _conflicts(store)
        assert list(conflicts) == [11]
        assert "stream_seq 10" in conflicts[11][0] and "time" in conflicts[11][0]
        assert store.counts() == {"events": 1, "rejected": 1}
    finally:
        store.close()


def test_the_same_body_however_it_is_written(tmp_path: Path) -> None:
    """Key order and whitespace of the raw JSON are not the body: decoded, they are equal."""
    store = EventStore(tmp_path / "events.duckdb")
    a = sample_event(EventType.FORUM_POSTED, "s-c")
    data = json.loads(a.to_json())
    rewritten = json.dumps(dict(reversed(list(data.items()))), indent=2).encode()
    again = decode(rewritten, a.subject)
    assert isinstance(again, Event)
    try:
        store.record([Recorded(a, 1)])
        store.record([Recorded(again, 2)])
        assert store.counts() == {"events": 1, "rejected": 0}
    finally:
        store.close()


async def test_a_conflict_on_the_stream_is_recorded_and_announced(
    admin: Bus, recorder: ServiceProcess, home: AarHome
) -> None:
    first = sample_event(EventType.SCORE_PUBLISHED, "s-conflict")
    forged = _changed(first, payload={"pgr": 0.97})
    await admin.publish(first)

    async def stored() -> bool:
        return await recorded_count(admin, f"SELECT count(*) FROM events WHERE id = '{first.id}'") == 1

    await wait_until(stored, what="the first copy")
    # Past the duplicate window (no Nats-Msg-Id): only the recorder can tell.
    await admin.publish_raw_many([(forged.subject, forged.to_json(), None)])

    async def announced() -> bool:
        return await recorded_count(
            admin, "SELECT count(*) FROM events WHERE type = 'recorder.rejected' "
                   "AND payload->>'reason' LIKE 'conflict:%'") == 1

    await wait_until(announced, 30, "the conflict, recorded and announced")
    result = await admin.request("recorder", "audit", {
        "sql": "SELECT stream_seq, reason, event_id FROM rejected_events WHERE reason LIKE 'conflict:%'"})
    (_, reason, event_id), = result["rows"]
    assert event_id == first.id and first.id in reason
    scores = await admin.request("recorder", "audit", {"sql": f"SELECT pgr FROM scores WHERE event_id = '{first.id}'"})
    assert scores["rows"] == [[0.55]]  # the first copy stands
    assert recorder.proc is not None and recorder.proc.poll() is None
