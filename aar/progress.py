"""The live progress line of ``aar up``: follows the session's events over NATS."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from bus import Bus, BusSettings, decode_msg
from schemas import Event
from schemas.agent import AgentLlmCalled, AgentStopped
from schemas.experiment import ExperimentFailed, ExperimentFinished, ExperimentRequested, Purpose, Split
from schemas.integrity import IntegrityFlagged
from schemas.scoring import BaselineComputed, BaselineKind, ScorePublished
from schemas.session import SessionResumed


@dataclass
class SessionWatch:
    session_id: str
    started: float = field(default_factory=time.monotonic)
    requested: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    dev_scores: int = 0
    best: dict[str, float] = field(default_factory=dict)  # agent -> best dev PGR
    best_overall: tuple[float, str, str] | None = None  # (pgr, agent, method)
    flags: int = 0
    cost_usd: float = 0.0
    agents_stopped: int = 0
    baselines: dict[str, float] = field(default_factory=dict)
    version: int = 0
    resumed: int = 0  # this run resumes the session (its n-th resume)
    _bus: Bus | None = None

    async def start(self, settings: BusSettings) -> None:
        self._bus = await Bus.connect(settings, name="aar-progress")
        await self._bus.nc.subscribe(f"aar.{self.session_id}.>", cb=self._on)

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()

    async def _on(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event):
            return
        p = event.payload
        if isinstance(p, ExperimentRequested):
            self.requested.add(p.experiment_id)
        elif isinstance(p, ExperimentFinished):
            self.finished.add(p.experiment_id)
        elif isinstance(p, ExperimentFailed) and not p.retryable:
            self.failed.add(p.experiment_id)
        elif isinstance(p, ScorePublished) and p.purpose is Purpose.SCORE and p.split is Split.DEV:
            self.dev_scores += 1
            if p.pgr is not None and p.agent_id:
                self.best[p.agent_id] = max(self.best.get(p.agent_id, -1e9), p.pgr)
                if self.best_overall is None or p.pgr > self.best_overall[0]:
                    self.best_overall = (p.pgr, p.agent_id, p.builtin_method or "code")
        elif isinstance(p, IntegrityFlagged):
            self.flags += 1
        elif isinstance(p, AgentLlmCalled):
            self.cost_usd += p.cost_usd
        elif isinstance(p, AgentStopped):
            self.agents_stopped += 1
        elif isinstance(p, BaselineComputed) and p.split is Split.DEV:
            self.baselines[p.kind.value] = p.mean
        elif isinstance(p, SessionResumed):  # what the earlier runs did counts too
            self.dev_scores += p.experiments
            self.cost_usd += p.cost_usd
            self.started -= p.elapsed_s
            self.resumed = p.resume
        else:
            return
        self.version += 1

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        done = len(self.finished | self.failed)
        queued = len(self.requested) - done
        parts = [f"[{elapsed // 60:02d}:{elapsed % 60:02d}]" + (f" resumed ({self.resumed})" if self.resumed else "")]
        if not self.baselines:
            parts.append("computing baselines (features are cached after the first run)")
        else:
            parts.append(f"weak {self.baselines.get(BaselineKind.WEAK.value, 0):.3f} / "
                         f"ceiling {self.baselines.get(BaselineKind.CEILING.value, 0):.3f}")
        parts.append(f"experiments {done} done, {queued} queued, {len(self.failed)} failed; {self.dev_scores} dev scores")
        if self.best_overall is not None:
            pgr, agent, method = self.best_overall
            parts.append(f"best dev PGR {pgr:.3f} ({agent}, {method})")
        if self.best:
            parts.append(" ".join(f"{a}={v:.2f}" for a, v in sorted(self.best.items())))
        if self.flags:
            parts.append(f"{self.flags} integrity flag(s)")
        if self.cost_usd:
            parts.append(f"${self.cost_usd:.2f}")
        return " · ".join(parts)
