"""One contract for both implementations of ``core.audit.AuditQueries``.

In the manner of eventsourcing's recorder test cases: :class:`AuditQueriesContract`
holds the tests, and each implementation subclasses it once, providing a factory:
``FileAudit`` on the log file read-only, ``RecorderAudit`` through a real recorder
process behind a real nats-server, over the same log. Every test asserts exact
values, so the two give the same answers; ``test_same_answers_as_the_file`` also
compares them query by query with the file (a copy of the log taken before the
recorder opened it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bus import Bus, NatsServer, Role
from bus.client import QueryError
from core.audit import (
    AuditFailed,
    AuditParamError,
    AuditQueries,
    AuditRefused,
    AuditRequest,
    AuditTimeout,
    Param,
)
from core.paths import AarHome
from schemas import Event, EventType
from schemas.forum import ForumPosted
from schemas.idea import IdeaProposed
from services.recorder.audit import FileAudit
from services.recorder.remote import RecorderAudit
from services.recorder.store import EventStore, Recorded

from .conftest import ServiceProcess, settings
from .factories import sample_event

pytestmark = pytest.mark.timeout(240)

SID = "s-contract"
TRICKY = "it's -- ; a \"tricky\" id"
IDEAS = ["idea-0", "idea-1", "idea-2", "idea-3", TRICKY]
SLOW = "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b"
Factory = Callable[..., AuditQueries]


def idea(idea_id: str, *, parents: list[str] | None = None, cites: list[str] | None = None,
         session_id: str = SID) -> Event:
    payload = IdeaProposed(idea_id=idea_id, agent_id="agent-1", title=f"title of {idea_id}", hypothesis="h",
                           builtin_method="conf_filter", parent_ideas=parents or [], cites_posts=cites or [])
    return Event.create(payload, session_id=session_id, source="test")


def post(post_id: str, *, session_id: str = SID) -> Event:
    payload = ForumPosted(post_id=post_id, agent_id="agent-2", title=f"post {post_id}", body="b")
    return Event.create(payload, session_id=session_id, source="test")


def fill(db: Path, events: list[Event]) -> None:
    store = EventStore(db)
    try:
        store.record([Recorded(e, i) for i, e in enumerate(events, 1)])
    finally:
        store.close()


def contract_events() -> list[Event]:
    return ([sample_event(EventType.SESSION_STARTED, SID)] + [idea(i) for i in IDEAS]
            + [post("post-1"), post("post-2")])


def log_state(db: Path) -> tuple[Any, ...]:
    """What must not change: rows of every table, ids in order, the chain's head."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return tuple(con.execute(sql).fetchall()[0] for sql in (
            "SELECT count(*), string_agg(id, ',' ORDER BY rowid) FROM events",
            "SELECT count(*) FROM rejected_events",
            "SELECT count(*), max(batch), arg_max(hash, batch) FROM log_chain"))
    finally:
        con.close()


@contextlib.contextmanager
def recorder_over(home: AarHome) -> Iterator[NatsServer]:
    """A nats-server and a recorder process on ``home`` (its log already filled), once
    the recorder answers audits as admin."""
    server = NatsServer(home.nats, log_file=home.logs / "nats-server.log")
    server.start()
    proc: ServiceProcess | None = None
    try:
        async def stream() -> None:
            bus = await Bus.connect(settings(server, Role.ADMIN), name="test-admin")
            try:
                await bus.ensure_stream()
            finally:
                await bus.close()

        asyncio.run(stream())
        proc = ServiceProcess("services.recorder", Role.RECORDER, server, home).start()
        audit = RecorderAudit(settings(server, Role.ADMIN))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    audit.query("SELECT 1")
                    break
                except QueryError:
                    if time.monotonic() > deadline:
                        raise AssertionError("the recorder never answered an audit:\n" + proc.log()[-3000:]) from None
                    time.sleep(0.1)
        finally:
            audit.close()
        yield server
    finally:
        if proc is not None:
            proc.stop()
        server.stop()


@pytest.fixture(scope="module")
def contract_home(tmp_path_factory: pytest.TempPathFactory) -> AarHome:
    """A log with the contract's events, and a copy of it (``reference.duckdb``)."""
    home = AarHome(tmp_path_factory.mktemp("contract") / "aar").ensure()
    fill(home.events_db, contract_events())
    shutil.copy(home.events_db, home.root / "reference.duckdb")
    return home


class AuditQueriesContract:
    """What every ``AuditQueries`` does. A subclass overrides the ``factory`` fixture:
    a callable making a fresh instance over the contract log (``timeout_s`` optional)."""

    @pytest.fixture
    def factory(self) -> Factory:
        raise NotImplementedError

    @pytest.fixture
    def audit(self, factory: Factory) -> Iterator[AuditQueries]:
        audit = factory()
        try:
            yield audit
        finally:
            audit.close()

    @pytest.fixture
    def reference(self, contract_home: AarHome) -> Iterator[AuditQueries]:
        audit = FileAudit.open(contract_home.root / "reference.duckdb")
        try:
            yield audit
        finally:
            audit.close()

    def test_is_an_audit_queries(self, audit: AuditQueries) -> None:
        assert isinstance(audit, AuditQueries)

    def test_no_params(self, audit: AuditQueries) -> None:
        result = audit.query("SELECT count(*) AS n FROM ideas WHERE session_id = 's-contract'")
        assert result.columns == ["n"] and result.rows == [[len(IDEAS)]]
        assert result.truncated is False and result.truncated_reason is None

    def test_bound_string(self, audit: AuditQueries) -> None:
        result = audit.query("SELECT idea_id, title FROM ideas WHERE idea_id = ?", ["idea-1"])
        assert result.rows == [["idea-1", "title of idea-1"]]
        assert audit.query("SELECT idea_id FROM ideas WHERE idea_id = ?", ["idea-9"]).rows == []

    def test_bound_numbers_and_numbered_placeholders(self, audit: AuditQueries) -> None:
        result = audit.query("SELECT $1 + 1 AS a, $1 * $2 AS b, $3 AS c", [41, 2, 0.5])
        assert result.rows == [[42, 82, 0.5]]
        ordered = audit.query("SELECT idea_id FROM ideas WHERE session_id = ? ORDER BY idea_id LIMIT ?", [SID, 2])
        assert ordered.rows == [["idea-0"], ["idea-1"]]

    def test_bound_list(self, audit: AuditQueries) -> None:
        sql = "SELECT idea_id FROM ideas WHERE list_contains(?::VARCHAR[], idea_id) ORDER BY idea_id"
        assert audit.query(sql, [["idea-2", "idea-0", "nope"]]).rows == [["idea-0"], ["idea-2"]]
        assert audit.query(sql, [[]]).rows == []
        assert audit.query("SELECT count(*) FROM ideas WHERE idea_id = ANY(?)",
                           [("idea-3", TRICKY)]).rows == [[2]]  # type: ignore[list-item]  # a tuple binds as a list too

    def test_scalars_come_back_as_bound(self, audit: AuditQueries) -> None:
        values = [None, True, False, -(2**63), 1.25, "a\x00b", "", "é ✓ 𝛑"]
        placeholders = ", ".join("?" for _ in values)
        assert audit.query(f"SELECT {placeholders}", values).rows == [values]

    @pytest.mark.parametrize("value", [TRICKY, "x' OR '1'='1", "a'); DROP TABLE events; --", "--", ";", "'", "\\"])
    def test_quotes_and_sql_in_a_param_are_only_text(self, audit: AuditQueries, value: str) -> None:
        found = audit.query("SELECT idea_id FROM ideas WHERE idea_id = ?", [value]).rows
        assert found == ([[TRICKY]] if value == TRICKY else [])
        assert audit.query("SELECT ? AS v", [value]).rows == [[value]]
        assert audit.query("SELECT count(*) FROM events").rows[0][0] >= len(contract_events())

    @pytest.mark.parametrize("sql", [
        "DELETE FROM events",
        "DROP TABLE events",
        "WITH d AS (DELETE FROM events RETURNING *) SELECT count(*) FROM d",
        "SELECT 1; DELETE FROM events",
        "UPDATE events SET source = ? WHERE id = ?",
    ])
    def test_writes_are_refused(self, audit: AuditQueries, sql: str) -> None:
        params = ["forged", "x"] if "?" in sql else []
        with pytest.raises(AuditRefused):
            audit.query(sql, params)
        assert audit.query("SELECT count(*) FROM ideas").rows == [[len(IDEAS)]]

    @pytest.mark.parametrize("params, message", [
        ([{"a": 1}], "parameter 1 is a dict"),
        ([1, b"raw"], "parameter 2 is a bytes"),
        ([[["nested"]]], "nested list"),
        ([["a", 1]], "mixes"),
        ([2**64], "outside 64 bits"),
        ([float("nan")], "finite"),
        (["\ud800"], "lone surrogate"),
        ("idea-1", "must be a list"),
    ])
    def test_bad_params_are_refused_clearly(self, audit: AuditQueries, params: Any, message: str) -> None:
        with pytest.raises(AuditParamError, match=message) as refused:
            audit.query("SELECT ?" if isinstance(params, str) else "SELECT " + ", ".join("?" for _ in params), params)
        assert isinstance(refused.value, ValueError)

    @pytest.mark.parametrize("sql, params, message", [
        ("SELECT ?", [], "takes 1 parameter"),
        ("SELECT ?, ?", ["a"], "takes 2 parameter"),
        ("SELECT 1", ["a"], "takes 0 parameter"),
        ("SELECT $name", ["a"], "named placeholders"),
        ("SELECT $\u00b2", ["a"], "named placeholders"),  # a superscript two is not a digit of a placeholder
        ("SELECT $1, $3", ["a", "b", "c"], "skip \\$2"),
    ])
    def test_params_must_match_the_placeholders(self, audit: AuditQueries, sql: str, params: list[Any],
                                                message: str) -> None:
        with pytest.raises(AuditParamError, match=message):
            audit.query(sql, params)

    @pytest.mark.parametrize("sql", ["SELECT * FROM query(?)", "SELECT * FROM Query_Table(?)",
                                     "SELECT count(*) FROM (SELECT * FROM main.query(?))"])
    def test_no_bound_value_is_run_as_sql(self, audit: AuditQueries, sql: str) -> None:
        """query() and query_table() would run a string as SQL, a bound one too."""
        with pytest.raises(AuditRefused, match="runs a string as SQL"):
            audit.query(sql, ["SELECT * FROM events"])

    def test_max_rows_truncates_and_says_why(self, audit: AuditQueries) -> None:
        result = audit.query("SELECT range AS i FROM range(10)", max_rows=3)
        assert result.rows == [[0], [1], [2]]
        assert result.truncated is True and "more than 3" in (result.truncated_reason or "")
        whole = audit.query("SELECT range AS i FROM range(10)", max_rows=10)
        assert len(whole.rows) == 10 and not whole.truncated
        with pytest.raises(AuditRefused, match="max_rows"):
            audit.query("SELECT 1", max_rows=0)

    def test_an_unknown_column_is_an_audit_failure(self, audit: AuditQueries) -> None:
        with pytest.raises(AuditFailed, match="no_such_column"):
            audit.query("SELECT no_such_column FROM ideas WHERE idea_id = ?", ["idea-1"])
        with pytest.raises(AuditFailed, match="Conversion|convert|cast"):
            audit.query("SELECT CAST(? AS INTEGER)", ["not a number"])
        assert audit.query("SELECT 1").rows == [[1]]  # and it goes on answering

    def test_a_statement_past_its_time_limit_is_stopped(self, factory: Factory) -> None:
        audit = factory(timeout_s=1.0)
        try:
            started = time.monotonic()
            with pytest.raises(AuditTimeout, match="exceeded 1 s"):
                audit.query(SLOW)
            assert time.monotonic() - started < 20
            assert audit.query("SELECT ?", [1]).rows == [[1]]
        finally:
            audit.close()

    def test_a_closed_one_answers_no_more(self, factory: Factory) -> None:
        audit = factory()
        assert audit.query("SELECT 1").rows == [[1]]
        audit.close()
        audit.close()  # twice is fine
        with pytest.raises(AuditRefused, match="closed"):
            audit.query("SELECT 1")

    def test_same_answers_as_the_file(self, audit: AuditQueries, reference: AuditQueries) -> None:
        cases: list[tuple[str, list[Param]]] = [
            ("SELECT * EXCLUDE (time) FROM ideas ORDER BY idea_id", []),
            ("SELECT post_id, title, idea_ids FROM forum_posts WHERE session_id = $1 ORDER BY post_id", [SID]),
            ("SELECT idea_id, parent_ideas FROM ideas WHERE list_contains(?, idea_id) ORDER BY 1", [IDEAS[::2]]),
            ("SELECT id, type, payload FROM events WHERE session_id = ? ORDER BY time, id", [SID]),
            ("DESCRIBE ideas", []),
        ]
        for sql, params in cases:
            mine, theirs = audit.query(sql, params), reference.query(sql, params)
            assert mine.model_dump() == theirs.model_dump(), sql


class TestFileAudit(AuditQueriesContract):
    @pytest.fixture
    def factory(self, contract_home: AarHome) -> Factory:
        return lambda **kw: FileAudit.open(contract_home.events_db, **kw)

    def test_no_log_is_file_not_found(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="aar up"):
            FileAudit.open(tmp_path / "none.duckdb")


@pytest.fixture(scope="module")
def recorder_home(contract_home: AarHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AarHome]:
    """A copy of the contract log, held by a running recorder."""
    home = AarHome(tmp_path_factory.mktemp("contract-recorder") / "aar").ensure()
    shutil.copy(contract_home.root / "reference.duckdb", home.events_db)
    with recorder_over(home) as server:
        home_server[home.root] = server
        yield home
    home_server.pop(home.root, None)


home_server: dict[Path, NatsServer] = {}


class TestRecorderAudit(AuditQueriesContract):
    @pytest.fixture
    def factory(self, recorder_home: AarHome) -> Factory:
        server = home_server[recorder_home.root]
        return lambda **kw: RecorderAudit(settings(server, Role.ADMIN), **kw)

    def test_the_recorder_refuses_bad_params_itself(self, recorder_home: AarHome) -> None:
        """The client checks parameters first; the recorder checks them again, for any
        other asker (raw requests here)."""
        server = home_server[recorder_home.root]

        async def ask(body: dict[str, Any]) -> str:
            bus = await Bus.connect(settings(server, Role.ADMIN), name="test-raw")
            try:
                await bus.request("recorder", "audit", body, timeout=30)
            except QueryError as exc:
                return str(exc)
            finally:
                await bus.close()
            return "answered"

        assert asyncio.run(ask({"sql": "SELECT ?", "params": [{"a": 1}]})).startswith(
            "AuditParamError: bad audit request: params: parameter 1 is a dict")
        assert "takes 1 parameter" in asyncio.run(ask({"sql": "SELECT ?"}))
        assert asyncio.run(ask({"sql": "SELECT ?", "params": "x"})).startswith("AuditParamError")
        assert "extra" in asyncio.run(ask({"sql": "SELECT 1", "param": [1]})).lower()
        assert asyncio.run(ask({"sql": "SELECT ?", "params": [1]})) == "answered"
        # as strict as the file path: no bool, string or float for a count or a time limit
        for bad in ({"max_rows": True}, {"max_rows": "10"}, {"max_rows": 10.0}, {"timeout_s": "5"},
                    {"timeout_s": True}):
            assert asyncio.run(ask({"sql": "SELECT 1", **bad})).startswith("AuditRefused: bad audit request"), bad
        assert asyncio.run(ask({"sql": "SELECT 1", "max_rows": 10, "timeout_s": 5})) == "answered"

    def test_a_deeply_nested_request_is_refused_not_crashed(self) -> None:
        deep = b'{"sql": "SELECT 1", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        with pytest.raises(AuditRefused):
            AuditRequest.parse(deep)
