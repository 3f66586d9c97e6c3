"""The artifact store: content addressing on disk, and put/get over a real NATS server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import Bus, NatsServer, Role
from bus.client import QueryError
from core.paths import AarHome
from services.artifacts.client import ArtifactClient
from services.artifacts.store import ArtifactCorrupt, ArtifactNotFound, ArtifactTooLarge, BlobStore, sha256

from .conftest import ServiceProcess, recorded_count, settings, wait_until


def test_same_bytes_are_one_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "a")
    first, new1 = store.put(b"def run(ctx): ...")
    second, new2 = store.put(b"def run(ctx): ...")
    assert first == second == sha256(b"def run(ctx): ...")
    assert (new1, new2) == (True, False)
    assert [p.name for p in (tmp_path / "a").rglob("*") if p.is_file()] == [first]
    assert store.get(first) == b"def run(ctx): ..."


def test_size_limit_and_missing_blob_have_clear_errors(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=10)
    with pytest.raises(ArtifactTooLarge, match="11 bytes exceeds the limit of 10"):
        store.put(b"x" * 11)
    with pytest.raises(ArtifactNotFound, match="no artifact"):
        store.get("0" * 64)


def test_a_tampered_blob_is_detected(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = store.put(b"predictions")
    path = store.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"better predictions")
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        store.get(digest)


@pytest.fixture
async def artifacts(nats_server: NatsServer, home: AarHome, admin: Bus, gateway: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess(
        "services.artifacts", Role.ARTIFACTS, nats_server, home, env={"AAR_ARTIFACT_MAX_BYTES": "100000"}
    ).start()
    client = ArtifactClient(admin, timeout=1.0)

    async def ready() -> bool:
        try:
            await client.get("0" * 64)
        except QueryError as exc:
            return str(exc) == "no artifact " + "0" * 64
        return False

    await wait_until(ready, 30, "the artifacts service")
    try:
        yield proc
    finally:
        proc.stop()


async def test_put_get_over_nats_records_one_event(nats_server: NatsServer, home: AarHome, admin: Bus, recorder: ServiceProcess, artifacts: ServiceProcess) -> None:
    agent = await Bus.connect(settings(nats_server, "agent-1"), name="agent-1")
    try:
        client = ArtifactClient(agent, session_id="s-art")
        code = b"def run(ctx):\n    return ctx.weak_soft_labels[:0]\n"
        # The owner is the asker's verified identity: a header claiming another is ignored.
        # A put whose answer would go elsewhere is not handled at all: nothing stored, no event.
        elsewhere = b"def run(ctx):\n    return None  # misdirected\n"
        for reply in ("_INBOX_agent-2.x", "aar.s-art.artifact.stored", ""):
            await agent.nc.publish("aarq.artifacts.put.agent-1", elsewhere, reply=reply,
                                   headers={"Aar-Kind": "code", "Aar-Session": "s-art"})
        await agent.nc.flush()
        forged = await agent.nc.request("aarq.artifacts.put.agent-1", code,
                                        headers={"Aar-Kind": "code", "Aar-Owner": "agent-2", "Aar-Session": "s-art"})
        assert not (home.artifacts / sha256(elsewhere)[:2] / sha256(elsewhere)).exists()
        assert forged.headers and forged.headers.get("Aar-Sha256") == sha256(code)
        first = await client.put(code, "code", name="method.py", media_type="text/x-python")
        again = await client.put(code, "code", name="method.py")
        assert first == again == sha256(code)
        assert await client.get(first) == code
        assert (home.artifacts / first[:2] / first).read_bytes() == code

        with pytest.raises(QueryError, match="exceeds the limit of 100,000 bytes"):
            await client.put(b"x" * 100_001, "other")
        with pytest.raises(QueryError, match="no artifact"):
            await client.get("f" * 64)

        async def recorded() -> bool:
            return await recorded_count(admin, "SELECT count(*) FROM events WHERE type = 'artifact.stored'") >= 1

        await wait_until(recorded, 20, "artifact.stored in the log")
        rows = (await admin.request("recorder", "audit", {"sql": (
            "SELECT session_id, payload->>'sha256', payload->>'kind', payload->>'owner', "
            "CAST(payload->>'size' AS INT) FROM events WHERE type = 'artifact.stored'")}))["rows"]
        assert rows == [["s-art", first, "code", "agent-1", len(code)]]
        assert artifacts.proc is not None and artifacts.proc.poll() is None  # still running after refusals
    finally:
        await agent.close()


async def test_an_agents_puts_are_budgeted_and_never_hold_up_a_trainers(nats_server: NatsServer, home: AarHome, admin: Bus, gateway: ServiceProcess) -> None:
    """A flood of tiny puts used to queue every other identity's puts behind it, and its
    announcements spent the artifacts service's own publish budget, so a trainer's
    predictions could not be stored. Puts are budgeted per identity (bytes and puts a
    minute, a total) and answered concurrently."""
    import asyncio
    import json

    proc = ServiceProcess("services.artifacts", Role.ARTIFACTS, nats_server, home,
                          env={"AAR_ARTIFACT_BUDGETS": json.dumps({"agent": [20_000_000, 30, 1 << 30]})}).start()
    try:
        agent = await Bus.connect(settings(nats_server, "agent-1"), name="agent-1")
        trainer = await Bus.connect(settings(nats_server, "trainer-1"), name="trainer-1")
        ready = ArtifactClient(admin, timeout=1.0)

        async def up() -> bool:
            try:
                await ready.get("0" * 64)
            except QueryError as exc:
                return str(exc) == "no artifact " + "0" * 64
            return False

        await wait_until(up, 30, "the artifacts service")
        client = ArtifactClient(agent, session_id="s-art", timeout=20.0)

        async def put(i: int) -> str:
            try:
                return await client.put(f"blob {i}".encode(), "other")
            except QueryError as exc:
                return str(exc)

        flood = asyncio.gather(*(put(i) for i in range(300)))
        t0 = asyncio.get_running_loop().time()
        sha = await ArtifactClient(trainer, session_id="s-art", timeout=10.0).put(b"predictions", "predictions")
        assert asyncio.get_running_loop().time() - t0 < 5.0 and len(sha) == 64
        answers = await flood
        stored = [a for a in answers if len(a) == 64]
        assert 25 <= len(stored) <= 31  # 30 a minute (one may refill meanwhile) ...
        assert all("30 artifact puts a minute" in a for a in answers if len(a) != 64)  # ... the rest refused
        await agent.close()
        await trainer.close()
    finally:
        proc.stop()
