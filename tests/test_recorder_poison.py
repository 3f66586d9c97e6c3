"""No message can crash the recorder or stop the messages after it (issue: "one message
stops all recording").

- a property test drives arbitrary bytes, arbitrary JSON (lone surrogates, huge
  numbers, deep nesting, wrong types) and valid envelopes with odd strings through
  ``schemas.decode`` -> ``EventStore.append`` / ``record``, and checks that the store
  stays usable and every message ends as exactly one event or one rejection (or is
  dropped as a copy of an event already stored with the same body);
- the store is fed what no decoder should return (a Rejection or an Event holding lone
  surrogates, built without validation): it stores them, escaped;
- a row the log refuses while moving is isolated and kept as a rejection;
- a real recorder process gets a poison message (id "\\ud800" as raw JSON bytes) and
  valid events after it: it stays up and records both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import Bus
from core.paths import AarHome
from schemas import Event, EventType, Rejection, decode
from services.recorder.store import EventStore, Recorded, RejectedRecord

from .conftest import ServiceProcess, recorded_count, recorder_health, wait_until
from .factories import sample_event

pytestmark = pytest.mark.timeout(300)

SESSION = "s-fuzz"
TEMPLATES = [sample_event(t, SESSION, n=0) for t in (EventType.IDEA_PROPOSED, EventType.AGENT_TOOL_CALLED,
                                                      EventType.SCORE_PUBLISHED, EventType.FORUM_POSTED)]
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ODD_TEXT = st.text(alphabet=st.one_of(SURROGATES, st.characters(), st.sampled_from(["\x00", "'", '"', "\\", "é", "😀"])),
                   max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False) | ODD_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ODD_TEXT, children, max_size=4),
    max_leaves=12,
)
ENVELOPE_FIELDS = ["id", "type", "schema_version", "session_id", "source", "time", "correlation_id", "causation_id",
                   "payload"]


@st.composite
def messages(draw: Any) -> tuple[str, bytes]:
    """(subject, raw bytes) of one message of some kind."""
    template = draw(st.sampled_from(TEMPLATES))
    base = json.loads(template.to_json())
    base["id"] = f"f-{draw(st.integers(0, 10**9))}"  # mostly unique ids
    kind = draw(st.sampled_from(["bytes", "json", "deep", "odd_string", "wrong_type", "valid", "surrogate_id"]))
    subject = template.subject
    if kind == "bytes":
        return subject, draw(st.binary(max_size=200))
    if kind == "json":
        return subject, json.dumps(draw(JSON_VALUES)).encode()
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return subject, (b"[" * depth + b"]" * depth) if draw(st.booleans()) else (b'{"a":' * depth + b"1" + b"}" * depth)
    if kind == "odd_string":
        where = draw(st.sampled_from(["source", "correlation_id", "causation_id", "payload"]))
        text = draw(ODD_TEXT)
        if where == "payload":
            key = next(k for k, v in base["payload"].items() if isinstance(v, str))
            base["payload"][key] = text
        else:
            base[where] = text
    elif kind == "wrong_type":
        base[draw(st.sampled_from(ENVELOPE_FIELDS))] = draw(JSON_VALUES)
    elif kind == "surrogate_id":
        base["id"] = "\ud800" + draw(ODD_TEXT)
    return subject, json.dumps(base).encode()


@st.composite
def workloads(draw: Any) -> list[tuple[str, Any]]:
    """Operations: new messages, exact repeats (a retried publish), a changed body under
    an id already used (a conflict), a redelivery (same stream sequence), and commits."""
    ops: list[tuple[str, Any]] = []
    sent: list[tuple[str, bytes]] = []
    for _ in range(draw(st.integers(1, 25))):
        choice = draw(st.sampled_from(["new"] * 6 + ["repeat", "conflict", "redeliver", "commit"]))
        if choice == "new" or not sent:
            msg = draw(messages())
            sent.append(msg)
            ops.append(("msg", msg))
        elif choice == "repeat":
            ops.append(("msg", draw(st.sampled_from(sent))))
        elif choice == "conflict":
            subject, raw = draw(st.sampled_from(sent))
            try:
                data = json.loads(raw)
                data["source"] = "someone-else"
                ops.append(("msg", (subject, json.dumps(data).encode())))
            except (ValueError, TypeError, RecursionError):
                ops.append(("msg", (subject, raw)))
        elif choice == "redeliver":
            ops.append(("redeliver", draw(st.integers(0, 10**6))))
        else:
            ops.append(("commit", draw(st.booleans())))
    return ops


def _storable_body(event: Event) -> tuple[Any, ...] | None:
    """The body of an event as the log stores it, or None if it cannot be stored as is."""
    try:
        payload = event.payload.model_dump_json()
        for value in (event.id, event.session_id, event.source, event.correlation_id, event.causation_id,
                      payload, event.subject):
            if value is not None:
                value.encode("utf-8")
    except Exception:  # noqa: BLE001 - unstorable: it must become a rejection
        return None
    return (event.type.value, event.schema_version, event.session_id, event.source, event.time,
            event.correlation_id, event.causation_id, payload)


def _rows(store: EventStore, sql: str) -> list[list[Any]]:
    return store.query(sql).rows


@given(workloads())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fuzzed_messages_each_end_as_one_event_or_one_rejection(ops: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(Path(tmp) / "events.duckdb")
        try:
            pending_events: list[Recorded] = []
            pending_rejected: list[RejectedRecord] = []
            delivered: list[tuple[int, Recorded | RejectedRecord]] = []
            outcome: dict[int, str] = {}  # stream_seq -> "event" | "rejected" | "dropped"
            stored: dict[str, tuple[Any, ...]] = {}  # id -> body of the stored copy
            seq = 0

            def commit(move: bool) -> None:
                store.append(pending_events, pending_rejected)
                pending_events.clear()
                pending_rejected.clear()
                if move:
                    store.move()

            for op, arg in ops:
                if op == "commit":
                    commit(arg)
                    continue
                if op == "redeliver":
                    if delivered:  # the same message, same stream sequence: stored once
                        again = delivered[arg % len(delivered)][1]
                        if isinstance(again, Recorded):
                            pending_events.append(again)
                        else:
                            pending_rejected.append(again)
                    continue
                subject, raw = arg
                seq += 1
                item = decode(raw, subject)
                if isinstance(item, Event):
                    recorded = Recorded(item, seq)
                    rec: Recorded | RejectedRecord = recorded
                    pending_events.append(recorded)
                    body = _storable_body(item)
                    if body is None:
                        outcome[seq] = "rejected"
                    elif item.id not in stored:
                        stored[item.id] = body
                        outcome[seq] = "event"
                    elif stored[item.id] == body:
                        outcome[seq] = "dropped"
                    else:
                        outcome[seq] = "conflict"
                else:
                    rec = RejectedRecord(item, seq)
                    pending_rejected.append(rec)
                    outcome[seq] = "rejected"
                delivered.append((seq, rec))
            commit(True)

            events = {r[0]: r[1] for r in _rows(store, "SELECT stream_seq, id FROM events")}
            rejected = {r[0]: r[1] for r in _rows(store, "SELECT stream_seq, reason FROM rejected_events")}
            assert not set(events) & set(rejected)
            for s, expected in outcome.items():
                if expected == "event":
                    assert s in events and s not in rejected, (s, expected)
                elif expected == "dropped":
                    assert s not in events and s not in rejected, (s, expected)
                elif expected == "conflict":
                    assert s in rejected and rejected[s].startswith("conflict:"), (s, rejected.get(s))
                else:
                    assert s in rejected and s not in events, (s, expected)
            assert len(events) + len(rejected) == sum(1 for v in outcome.values() if v != "dropped")
            # still usable: a valid event goes in and comes out
            good = sample_event(EventType.SESSION_ENDED, SESSION)
            store.record([Recorded(good, 10**7)])
            assert _rows(store, f"SELECT count(*) FROM events WHERE id = '{good.id}'") == [[1]]
            from services.recorder import (
                chain,  # (new code only: the log is still intact)
            )

            assert _rows(store, chain.breaks_sql()) == []
        finally:
            store.close()


def test_what_no_decoder_should_return_is_still_stored(tmp_path: Path) -> None:
    """The store does not trust the decoder: a Rejection whose strings hold lone surrogates
    (built without validation, as an older ``schemas.decode`` returned them), and an Event
    with one in a field, are stored (escaped; the event as a rejection), and the batch's
    other messages with them."""
    store = EventStore(tmp_path / "events.duckdb")
    try:
        poison = Rejection.model_construct(reason="invalid event: \ud800", raw=b'{"id": "\\ud800"}',
                                           subject="aar.s-p.idea.proposed", event_id="\ud800",
                                           event_type="idea.\udfff", session_id="s-\ud800")
        odd = sample_event(EventType.IDEA_PROPOSED, "s-p").model_copy(update={"source": "agent-\ud800"})
        good = sample_event(EventType.IDEA_PROPOSED, "s-p", n=1)
        store.record([Recorded(odd, 2), Recorded(good, 3)], [RejectedRecord(poison, 1)])
        rows = {r[0]: r[1:] for r in store.query(
            "SELECT stream_seq, event_id, reason FROM rejected_events ORDER BY 1").rows}
        assert rows[1][0] == "\\ud800" and "\\ud800" in rows[1][1]
        assert rows[2][1].startswith("unstorable event") and "source" in rows[2][1]
        assert store.query("SELECT stream_seq FROM events").rows == [[3]]
    finally:
        store.close()


def test_a_row_the_log_refuses_is_isolated_and_kept_as_a_rejection(tmp_path: Path) -> None:
    """A row that reached the inbox but that the log refuses (here: a payload that is not
    JSON, put there by hand) must not hold up the move: the rows around it are moved, it
    becomes a rejection with the reason, and every later move works."""
    store = EventStore(tmp_path / "events.duckdb")
    events = [Recorded(sample_event(EventType.AGENT_TOOL_CALLED, "s-q", n=i), i + 1) for i in range(20)]
    try:
        store.append(events[:10])
        cur = store._cursor()
        target = store.inboxes.target()
        cur.execute(f"UPDATE {target}.events SET payload = 'not json {{' WHERE stream_seq = 5")
        cur.close()
        store.move()
        store.record(events[10:])
        assert store.counts() == {"events": 19, "rejected": 1}
        (seq, reason, raw), = store.query("SELECT stream_seq, reason, raw FROM rejected_events").rows
        assert seq == 5 and reason.startswith("unstorable") and events[4].event.id in bytes.fromhex(raw).decode()
        from services.recorder import chain

        assert store.query(chain.breaks_sql()).rows == []
    finally:
        store.close()


async def test_a_poison_message_does_not_stop_the_recorder(
    admin: Bus, recorder: ServiceProcess, home: AarHome
) -> None:
    """Id "\\ud800" (valid JSON, raw bytes) was the message that crashed the recorder on
    every restart. Now it is a rejection, and the events after it are recorded."""
    template = json.loads(sample_event(EventType.IDEA_PROPOSED, "s-poison").to_json())
    template["id"] = "\ud800"
    poison = json.dumps(template).encode()
    assert b"\\ud800" in poison
    huge_subject = "aar.s-poison." + "x" * 400  # and a subject no recorder.rejected event can carry
    await admin.publish_raw_many([("aar.s-poison.idea.proposed", poison, None), (huge_subject, b"{}", None)])
    after = [sample_event(EventType.AGENT_TOOL_CALLED, "s-poison", n=i) for i in range(20)]
    await admin.publish_many(after)

    async def recorded() -> bool:
        health = await recorder_health(admin)
        return bool(health) and await recorded_count(
            admin, "SELECT count(*) FROM events WHERE session_id = 's-poison' AND type = 'agent.tool_called'") == 20

    await wait_until(recorded, 60, "the events after the poison message")
    assert recorder.proc is not None and recorder.proc.poll() is None, recorder.log()[-3000:]
    result = await admin.request("recorder", "audit", {"sql": "SELECT subject, reason, raw FROM rejected_events "
                                                       "ORDER BY stream_seq"})
    assert len(result["rows"]) == 2
    (subject, reason, raw), (subject2, _, _) = result["rows"]
    assert subject == "aar.s-poison.idea.proposed" and bytes.fromhex(raw) == poison and reason
    assert huge_subject.startswith(subject2) and len(subject2) >= 256  # (schemas may cut it)
    # and it stays up across a restart (no crash loop on a redelivered message)
    recorder.stop()
    recorder.start()
    await wait_until(lambda: _health_ok(admin), 30, "the restarted recorder")
    await admin.publish(sample_event(EventType.SESSION_ENDED, "s-poison"))

    async def ended() -> bool:
        return await recorded_count(
            admin, "SELECT count(*) FROM events WHERE session_id = 's-poison' AND type = 'session.ended'") == 1

    await wait_until(ended, 30, "an event after the restart")
    assert recorder.proc.poll() is None


async def _health_ok(admin: Bus) -> bool:
    return await recorder_health(admin) is not None
