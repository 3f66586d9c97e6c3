"""Agent-written strings reach SQL only as bound parameters.

Ids in the log are written by agents (an idea id, the parents it names, the posts it
cites), and ids on the command line by whoever types them. Each string here goes
through ``aar lineage``, the replay path (``aar replay``, ``replay.log``) and the
named audits (``aar audit --named X --session ...``): the answer is exactly the rows
that hold that string (none when no row does, then a clean "not found"), and the log
is unchanged (rows, ids, chain).

Issue: "No SQL value is spliced into text anywhere". Before, values were quoted into
the text, quotes doubled. That quoting held for quotes, ``--``, ``;`` and NUL (these
tests pass on it); what failed was the lone surrogate (an argument with invalid
bytes): ``aar lineage`` and ``aar replay`` crashed with a DuckDB conversion error or
a TypeError instead of answering "not found", and the named audits refused any
session that was not a subject token instead of answering for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from aar.cli import app
from core.paths import AarHome
from replay.audits import QUERIES
from schemas import Event, EventType
from schemas.experiment import ExperimentRequested
from schemas.forum import ForumPosted
from schemas.idea import IdeaProposed
from services.recorder import chain
from services.recorder.store import EventStore, Recorded

from .factories import sample_event

pytestmark = pytest.mark.timeout(240)
runner = CliRunner()

SID = "s-evil"
OR = "x' OR '1'='1"
DROP = "a'); DROP TABLE events; --"
NUL = "a\x00b"
SURROGATE = "\ud800"
# What agents (or a shell) may send. All but the surrogate can be ids in the log.
EVIL = [OR, DROP, "--", ";", NUL, SURROGATE]
IN_LOG = [OR, DROP, "--", ";", NUL]
# An event id (printable ASCII, no spaces) that is itself an injection attempt.
EVIL_EVENT_ID = "x'OR'1'='1--;"


def _idea(idea_id: str, parents: Sequence[str] = (), cites: Sequence[str] = (), *, event_id: str | None = None,
          session_id: str = SID) -> Event:
    payload = IdeaProposed(idea_id=idea_id, agent_id="agent-1", title=f"idea {idea_id!r}", hypothesis="h",
                           builtin_method="conf_filter", parent_ideas=list(parents), cites_posts=list(cites))
    return Event.create(payload, session_id=session_id, source="test", id=event_id)


def _post(post_id: str) -> Event:
    return Event.create(ForumPosted(post_id=post_id, agent_id="agent-2", title=f"post {post_id!r}", body="b"),
                        session_id=SID, source="test")


def _experiment(experiment_id: str, idea_id: str) -> Event:
    payload = ExperimentRequested(experiment_id=experiment_id, idea_id=idea_id, agent_id="agent-1",
                                  dataset="rotten_tomatoes", weak_model="minilm", strong_model="mpnet", seeds=[0],
                                  builtin_method="conf_filter")
    return Event.create(payload, session_id=SID, source="test")


def events() -> list[Event]:
    out = [sample_event(EventType.SESSION_STARTED, SID), sample_event(EventType.SESSION_STARTED, "s-other")]
    # Decoys: what a broken quoting would find instead.
    out += [_idea("root"), _idea("x"), _idea("a b"), _idea("a"), _idea("1")]
    out += [_idea(OR, ["root"], [OR], event_id=EVIL_EVENT_ID)]
    out += [_idea("child", [OR], [OR, "post-1"])]
    out += [_idea(i) for i in IN_LOG if i != OR]
    out += [_post(OR), _post("post-1"), _post("post-2"), _post("x")]
    out += [_experiment("exp-nul", NUL), _experiment("exp-space", "a b"), _experiment("exp-or", OR)]
    out += [_idea("other-idea", session_id="s-other")]
    return out


def log_state(home: AarHome) -> tuple[Any, ...]:
    con = duckdb.connect(str(home.events_db), read_only=True)
    try:
        state = tuple(con.execute(sql).fetchall()[0] for sql in (
            "SELECT count(*), string_agg(id, ',' ORDER BY rowid) FROM events",
            "SELECT count(*) FROM rejected_events",
            "SELECT count(*), max(batch), arg_max(hash, batch) FROM log_chain",
            "SELECT count(*) FROM duckdb_tables()", "SELECT count(*) FROM duckdb_views()"))
        assert con.execute(chain.breaks_sql()).fetchall() == []
        return state
    finally:
        con.close()


@pytest.fixture(scope="module")
def evil_home(tmp_path_factory: pytest.TempPathFactory) -> AarHome:
    home = AarHome(tmp_path_factory.mktemp("evil") / "aar").ensure()
    store = EventStore(home.events_db)
    try:
        store.record([Recorded(e, i) for i, e in enumerate(events(), 1)])
    finally:
        store.close()
    return home


@pytest.fixture
def home(evil_home: AarHome, monkeypatch: pytest.MonkeyPatch) -> Iterator[AarHome]:
    """The evil log as AAR_HOME; after the test, the log is as it was."""
    monkeypatch.setenv("AAR_HOME", str(evil_home.root))
    before = log_state(evil_home)
    yield evil_home
    assert log_state(evil_home) == before


def _json(output: str) -> Any:
    return json.loads(output)


def _lineage(any_id: str) -> dict[str, Any]:
    done = runner.invoke(app, ["lineage", "-f", "json", "--", any_id])  # ("--": the id may be "--")
    assert done.exit_code == 0, done.output
    return _json(done.stdout)


# -- aar lineage ----------------------------------------------------------------------


def test_a_parent_id_that_is_an_injection_is_just_an_id(home: AarHome) -> None:
    data = _lineage("child")
    assert data["idea"]["idea_id"] == "child" and data["idea"]["parent_ideas"] == [OR]
    assert [(a["idea_id"], a["depth"]) for a in data["ancestors"]] == [(OR, 1), ("root", 2)]
    assert not any(a.get("missing") for a in data["ancestors"])
    assert sorted(p["post_id"] for p in data["cited_posts"]) == sorted([OR, "post-1"])


@pytest.mark.parametrize("evil", IN_LOG)
def test_lineage_of_every_agent_written_id(home: AarHome, evil: str) -> None:
    data = _lineage(evil)
    assert data["idea"]["idea_id"] == evil, f"asked for {evil!r}, got the lineage of {data['idea']['idea_id']!r}"
    expected = {NUL: ["exp-nul"], OR: ["exp-or"]}.get(evil, [])
    assert [e["experiment_id"] for e in data["experiments"]] == expected
    if evil == OR:
        assert [a["idea_id"] for a in data["ancestors"]] == ["root"]
        assert [p["post_id"] for p in data["cited_posts"]] == [OR]
    else:
        assert data["ancestors"] == [] and data["cited_posts"] == []


@pytest.mark.parametrize("evil", ["x' OR 1=1 --", "' OR ''='", "1' UNION SELECT 's-evil', 'root', 'idea' --",
                                  "a\x00", SURROGATE, "exp-nul'--"])
def test_lineage_of_an_id_nobody_has_is_not_found(home: AarHome, evil: str) -> None:
    done = runner.invoke(app, ["lineage", "--", evil])
    assert done.exit_code == 1, done.output
    assert "no idea, experiment or score with id" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


# -- the replay path ----------------------------------------------------------------


@pytest.mark.parametrize("evil", [*EVIL, "s-evil' OR '1'='1", "s-evil'--"])
def test_replay_of_an_injected_session_is_not_found(home: AarHome, evil: str) -> None:
    done = runner.invoke(app, ["replay", "-f", "json", "--", evil])
    assert done.exit_code == 1, done.output
    assert "no events for session" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


@pytest.mark.parametrize("evil", [OR, DROP, "--", ";", NUL, SURROGATE, "x'OR'1'='1"])
def test_replay_until_an_event_id_nobody_has_is_not_found(home: AarHome, evil: str) -> None:
    done = runner.invoke(app, ["replay", SID, "--until", evil, "-f", "json"])
    assert done.exit_code == 1, done.output
    assert "no event with id" in done.output


def test_replay_until_an_evil_event_id_stops_exactly_there(home: AarHome) -> None:
    done = runner.invoke(app, ["replay", SID, "--until", EVIL_EVENT_ID, "-f", "json"])
    assert done.exit_code == 0, done.output
    ideas = [i["idea_id"] for i in _json(done.stdout)["ideas"]]
    assert ideas == ["root", "x", "a b", "a", "1", OR]
    whole = [i["idea_id"] for i in _json(runner.invoke(app, ["replay", SID, "-f", "json"]).stdout)["ideas"]]
    assert sorted(whole) == sorted(["root", "x", "a b", "a", "1", "child", *IN_LOG])


def test_replay_log_binds_sessions_and_event_ids(home: AarHome) -> None:
    """``replay.log`` itself, on the file and through the audit interface."""
    from replay.log import UnknownSession, Until, rows_from_audit, rows_from_connection
    from services.recorder.audit import FileAudit, open_read_only

    con = open_read_only(home.events_db)
    audit = FileAudit.open(home.events_db)
    try:
        for evil in [*EVIL, "s-evil' OR '1'='1"]:
            assert rows_from_connection(con, evil) == []
            assert rows_from_audit(audit, evil) == []
            for read in (lambda u: rows_from_connection(con, SID, until=u),
                         lambda u: rows_from_audit(audit, SID, until=u)):
                with pytest.raises(UnknownSession, match="no event with id"):
                    read(Until(event_id=evil))
        mine = rows_from_connection(con, SID, until=Until(event_id=EVIL_EVENT_ID))
        assert mine[-1].id == EVIL_EVENT_ID
        assert rows_from_audit(audit, SID, until=Until(event_id=EVIL_EVENT_ID), page=2) == mine
        assert {r.session_id for r in rows_from_audit(audit, SID, page=3)} == {SID}
    finally:
        audit.close()
        con.close()


# -- named audits ---------------------------------------------------------------------


@pytest.mark.parametrize("evil", [OR, DROP, "--", ";", NUL, "s-evil' OR '1'='1", "s-evil'--"])
def test_named_audits_of_an_injected_session_answer_nothing(home: AarHome, evil: str) -> None:
    for name in QUERIES:
        done = runner.invoke(app, ["audit", "--named", name, "--session", evil, "-f", "json"])
        assert done.exit_code == 0, (name, done.output)
        assert done.stdout.strip() == "", (name, done.stdout)
    # while the real session has rows
    done = runner.invoke(app, ["audit", "--named", "cost_per_idea", "--session", SID, "-f", "json"])
    assert done.exit_code == 0
    shown = runner.invoke(app, ["audit", "--named", "best_score_lineage", "-f", "json"])
    assert shown.exit_code == 0


def test_a_named_audit_of_a_session_that_is_not_text_says_so(home: AarHome) -> None:
    done = runner.invoke(app, ["audit", "--named", "tool_usage", "--session", SURROGATE])
    assert done.exit_code == 1, done.output
    assert "no session" in done.output and "not valid text" in done.output


def test_ad_hoc_audit_with_bound_evil_values(home: AarHome) -> None:
    """``aar audit``'s own path (``run_audit``) binds whatever it is given."""
    from aar.log_audit import run_audit

    for evil in IN_LOG:
        result = run_audit("SELECT idea_id FROM ideas WHERE idea_id = ?", [evil])
        assert result.rows == [[evil]]
    assert run_audit("SELECT count(*) FROM ideas WHERE list_contains(?, idea_id)", [EVIL[:-1] + ["x"]]).rows \
        == [[len(IN_LOG) + 1]]


# -- through a running recorder --------------------------------------------------------


def test_lineage_and_replay_through_the_recorder(evil_home: AarHome, tmp_path_factory: pytest.TempPathFactory) -> None:
    import contextlib
    import shutil

    from aar.lineage import LineageError, lineage
    from bus import Role
    from replay.log import UnknownSession, Until, rows_from_audit
    from services.recorder.remote import RecorderAudit

    from .conftest import settings
    from .test_audit_queries import recorder_over

    home = AarHome(tmp_path_factory.mktemp("evil-recorder") / "aar").ensure()
    shutil.copy(evil_home.events_db, home.events_db)
    with recorder_over(home) as server, contextlib.closing(RecorderAudit(settings(server, Role.ADMIN))) as audit:
        data = lineage(audit, "child")
        assert [a["idea_id"] for a in data["ancestors"]] == [OR, "root"]
        for evil in IN_LOG:
            assert lineage(audit, evil)["idea"]["idea_id"] == evil
        for evil in ("x' OR 1=1 --", SURROGATE):
            with pytest.raises(LineageError):
                lineage(audit, evil)
        for evil in EVIL:
            assert rows_from_audit(audit, evil) == []
            with pytest.raises(UnknownSession):
                rows_from_audit(audit, SID, until=Until(event_id=evil))
        assert rows_from_audit(audit, SID, until=Until(event_id=EVIL_EVENT_ID))[-1].id == EVIL_EVENT_ID
        counts = audit.query("SELECT count(*) FROM events WHERE source = 'test'").rows
    assert counts == [[len(events())]]
