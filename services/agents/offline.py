"""The offline research policy: no API key, seeded and reproducible.

An evolutionary search over the built-in method library and its hyper-parameters,
steered by the agent's direction and by what the others publish:

- the first idea tries the direction's favourite method with its defaults;
- then, each round, it either *explores* (a method from its direction's prior with
  mutated parameters) or *builds on* the best idea of the session so far, whoever
  found it (the leaderboard), mutating one or two of its parameters, citing the
  forum post that reported it and naming it as the parent idea. Exploitation
  becomes likelier as the session goes on; flagged ideas are never built on;
- after each score it posts a finding (replying to the post it built on) and
  up-votes that post when building on it helped.

:class:`OfflinePolicy` is pure (inputs in, a proposal out, one ``random.Random``);
:func:`run_offline` connects it to the tools.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from . import niches
from .assignment import Assignment
from .blocks import Recipe
from .composer import title_of
from .directions import DIRECTIONS, by_key
from .primer import prior_weight
from .toolbox import Toolbox

# Search space of the parameters the policy tunes: (kind, low, high) or ("choice", options).
SPACE: dict[str, tuple[Any, ...]] = {
    "lr": ("log", 2e-3, 5e-2),
    "l2": ("log", 1e-4, 1e-1),
    "epochs": ("int", 5, 60),
    "aux_coef": ("float", 0.1, 1.0),
    "warmup_frac": ("float", 0.0, 0.5),
    "alpha": ("float", 0.25, 2.0),
    "beta": ("float", 0.25, 2.0),
    "drop_frac": ("float", 0.05, 0.6),
    "threshold": ("float", 0.35, 0.65),
    "val_frac": ("float", 0.1, 0.4),
    "patience": ("int", 2, 10),
    "relabel_frac": ("float", 0.2, 0.9),
    "rounds": ("int", 1, 3),
}
HEAD_TUNED = ("lr", "l2", "epochs")
BUILTIN_SHARE = 0.15  # after the first idea: how often a built-in method is tried rather than code
EXTEND_OTHERS = 0.5  # building on another agent's best code: extend its module (else mutate its recipe)
CANDIDATES = 6  # recipes drawn per exploration; the least tried block combination wins


@dataclass(frozen=True, slots=True)
class Proposal:
    method: str
    params: dict[str, Any]
    title: str
    hypothesis: str
    why: str
    parent_ideas: tuple[str, ...] = ()
    cites_posts: tuple[str, ...] = ()
    builds_on_agent: str | None = None
    recipe: Recipe | None = None  # a method written as code (``method`` is then "code")


@dataclass(frozen=True, slots=True)
class KnownCode:
    """A code idea of the session as this agent read it: its module's recipe (None when
    it was not written from blocks) and its artifact hash."""

    sha: str
    recipe: Recipe | None


def _defaults(method: str) -> dict[str, Any]:
    from trainer.methods import METHODS
    from trainer.methods.base import HeadConfig

    head = HeadConfig()
    return {**{k: getattr(head, k) for k in HEAD_TUNED}, **METHODS[method].defaults}


def _tunable(method: str) -> list[str]:
    return sorted(k for k in _defaults(method) if k in SPACE)


def _mutate_value(rng: random.Random, name: str, value: Any) -> Any:
    kind, *bounds = SPACE[name]
    if kind == "log":
        lo, hi = bounds
        x = math.exp(math.log(max(float(value), lo)) + rng.gauss(0.0, 0.6))
        return round(min(hi, max(lo, x)), 5)
    if kind == "float":
        lo, hi = bounds
        return round(min(hi, max(lo, float(value) + rng.gauss(0.0, (hi - lo) / 5))), 4)
    if kind == "int":
        lo, hi = bounds
        return int(min(hi, max(lo, round(int(value) + rng.gauss(0.0, max(1.0, (hi - lo) / 6))))))
    raise ValueError(kind)


def mutate(rng: random.Random, method: str, params: dict[str, Any], n: int) -> dict[str, Any]:
    """``params`` with ``n`` tunable parameters changed (only those that differ from the defaults are kept)."""
    full = {**_defaults(method), **params}
    names = _tunable(method)
    for name in rng.sample(names, k=min(n, len(names))):
        full[name] = _mutate_value(rng, name, full[name])
    base = _defaults(method)
    return {k: v for k, v in sorted(full.items()) if base.get(k) != v}


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"


@dataclass(slots=True)
class OfflinePolicy:
    assignment: Assignment
    rng: random.Random = field(init=False)
    direction_key: str = field(init=False)
    prior: tuple[str, ...] = field(init=False)
    rounds: int = 0
    tried: dict[tuple[str, ...], int] = field(default_factory=dict)  # block combination -> ideas seen with it
    proposed: set[str] = field(default_factory=set)  # digests of the recipes it proposed or dropped

    def __post_init__(self) -> None:
        history = self.assignment.history
        seed = f"{self.assignment.seed}/{self.assignment.agent_id}"
        if history is not None and history.ideas:
            # Going on after a resume: past its first round, and not replaying the choices it made.
            self.rounds = len(history.ideas)
            seed += f"/resume {history.resumes}/{len(history.ideas)}"
        self.rng = random.Random(seed)
        try:
            d = by_key(self.assignment.direction_key or self.assignment.direction)
        except KeyError:
            d = DIRECTIONS[self.rng.randrange(len(DIRECTIONS))]
        self.direction_key, self.prior = d.key, d.methods

    def _explore(self, first: bool) -> Proposal:
        # The direction's order, tempered by what the primer measured of each method.
        weights = [(len(self.prior) - i) * prior_weight(m) for i, m in enumerate(self.prior)]
        method = self.prior[0] if first else self.rng.choices(self.prior, weights=weights)[0]
        params = {} if first else mutate(self.rng, method, {}, self.rng.randint(1, 3))
        return Proposal(
            method=method,
            params=params,
            title=f"{method} ({_fmt(params)})",
            hypothesis=(f"Following the direction '{self.direction_key}': {method} should recover more of the gap "
                        f"than naive training on weak labels" + ("" if first else f" with {_fmt(params)}") + "."),
            why=("Start from the method closest to my direction, with its defaults, as a reference point."
                 if first else "Exploring my direction's methods and hyper-parameters."),
        )

    def choose(self, leaderboard: list[dict[str, Any]], posts: list[dict[str, Any]],
               known: dict[str, KnownCode] | None = None) -> Proposal:
        """The next idea, from the session's leaderboard (dev scores), recent forum posts and
        the code ideas it has read (``known``: idea id -> its module's hash and recipe)."""
        first = self.rounds == 0
        self.rounds += 1
        if first:
            return self._explore(first=True)
        known = known or {}
        for entry in leaderboard:
            code = known.get(entry.get("idea_id", ""))
            if code is not None and code.recipe is not None:
                self.note_tried(code.recipe)
        if self.rng.random() >= BUILTIN_SHARE:
            return self._code(leaderboard, posts, known)
        return self._builtin(leaderboard, posts)

    def note_tried(self, recipe: Recipe) -> None:
        """Count ``recipe``'s block combination as tried (once per distinct recipe)."""
        mark = f"tried|{recipe.digest()}"
        if mark not in self.proposed:
            self.proposed.add(mark)
            self.tried[recipe.combination] = self.tried.get(recipe.combination, 0) + 1

    def dropped(self, proposal: Proposal) -> None:
        """A candidate that failed its cheap tests: never proposed again, its combination counted."""
        if proposal.recipe is not None:
            self.proposed.add(proposal.recipe.digest())

    def _fresh(self, recipe: Recipe) -> bool:
        return recipe.digest() not in self.proposed

    def _code(self, leaderboard: list[dict[str, Any]], posts: list[dict[str, Any]],
              known: dict[str, KnownCode]) -> Proposal:
        candidates = [e for e in leaderboard if e.get("pgr") is not None and not e.get("flags")
                      and e.get("idea_id") in known]
        exploit = max(0.3, min(0.85, 0.25 + 0.12 * self.rounds))
        if candidates and self.rng.random() < exploit:
            best = max(candidates, key=lambda e: (e["pgr"], e["idea_id"]))
            code = known[best["idea_id"]]
            other = best.get("agent_id") != self.assignment.agent_id
            cites = tuple(sorted(p["post_id"] for p in posts if best["idea_id"] in (p.get("idea_ids") or [])))[:3]
            for _ in range(8):
                if (other and self.rng.random() < EXTEND_OTHERS) or code.recipe is None:
                    recipe = niches.extend(self.rng, niches.sample(self.rng, self.direction_key), code.sha)
                    how = f"extends {best['idea_id']}'s code (its module, imported by its hash) with"
                else:
                    recipe = niches.mutate(self.rng, code.recipe, self.direction_key)
                    how = f"changes one block of {best['idea_id']}'s recipe:"
                if self._fresh(recipe):
                    break
            else:
                return self._explore_code()
            self.proposed.add(recipe.digest())
            self.note_tried(recipe)
            return Proposal(
                method="code", params={}, recipe=recipe,
                title=f"code: {title_of(recipe)}, from {best['idea_id'][-6:]}",
                hypothesis=(f"The best code idea so far ({best['idea_id']}, dev PGR {best['pgr']:.3f}"
                            + (f", by {best.get('agent_id')}" if other else "") + f") can be improved: this {how} "
                            f"{recipe.describe()}."),
                why=(f"Building on {best['idea_id']}: the session's best written method"
                     + (f", cited in {', '.join(cites)}" if cites else "") + "."),
                parent_ideas=(best["idea_id"],), cites_posts=cites,
                builds_on_agent=best.get("agent_id") if other else None,
            )
        return self._explore_code()

    def _explore_code(self) -> Proposal:
        drawn = [niches.sample(self.rng, self.direction_key) for _ in range(CANDIDATES)]
        fresh = [r for r in drawn if self._fresh(r)]
        recipe = drawn[0]
        for _ in range(50):  # all drawn seen before: walk away from one until the recipe is new
            if fresh:
                break
            recipe = niches.mutate(self.rng, recipe, self.direction_key)
            fresh = [recipe] if self._fresh(recipe) else []
        fresh = fresh or [recipe]
        # novelty: the block combination tried least often in the session wins (the first drawn on a tie)
        recipe = min(fresh, key=lambda r: self.tried.get(r.combination, 0))
        self.proposed.add(recipe.digest())
        self.note_tried(recipe)
        return Proposal(
            method="code", params={}, recipe=recipe, title=f"code: {title_of(recipe)}",
            hypothesis=(f"Following the direction '{self.direction_key}': a method of {recipe.describe()} should "
                        "recover more of the gap than naive training on the weak labels."),
            why=("Exploring my direction with a block combination the session has "
                 + ("not tried yet." if self.tried.get(recipe.combination, 0) <= 1 else "tried least.")),
        )

    def _builtin(self, leaderboard: list[dict[str, Any]], posts: list[dict[str, Any]]) -> Proposal:
        candidates = [e for e in leaderboard if e.get("pgr") is not None and not e.get("flags")
                      and not str(e.get("method", "")).startswith("code:")]
        exploit = max(0.3, min(0.85, 0.25 + 0.12 * self.rounds))
        if candidates and self.rng.random() < exploit:
            best = max(candidates, key=lambda e: (e["pgr"], e["idea_id"]))
            params = mutate(self.rng, best["method"], dict(best.get("params") or {}), self.rng.randint(1, 2))
            cites = tuple(sorted(p["post_id"] for p in posts if best["idea_id"] in (p.get("idea_ids") or [])))[:3]
            other = best.get("agent_id") != self.assignment.agent_id
            return Proposal(
                method=best["method"],
                params=params,
                title=f"{best['method']} ({_fmt(params)}), from {best['idea_id'][-6:]}",
                hypothesis=(f"The best idea so far ({best['method']}, dev PGR {best['pgr']:.3f}"
                            + (f", by {best.get('agent_id')}" if other else "") + f") can be improved by {_fmt(params)}."),
                why=(f"Building on {best['idea_id']}: local search around the session's best configuration"
                     + (f", cited in {', '.join(cites)}" if cites else "") + "."),
                parent_ideas=(best["idea_id"],),
                cites_posts=cites,
                builds_on_agent=best.get("agent_id") if other else None,
            )
        return self._explore(first=False)


def _what(proposal: Proposal) -> str:
    if proposal.recipe is not None:
        return f"code ({title_of(proposal.recipe)})"
    return f"{proposal.method} ({_fmt(proposal.params)})"


def finding(proposal: Proposal, idea_id: str, outcome: dict[str, Any], parent_pgr: float | None) -> tuple[str, str]:
    """Title and body of the forum post reporting an idea's outcome."""
    score = outcome.get("score")
    if not score:
        failure = outcome.get("failure") or {}
        return (f"{_what(proposal)}: no score ({outcome.get('status')})",
                f"Idea {idea_id} ({_what(proposal)}) was not scored: "
                f"{failure.get('error_class', '')} {failure.get('message', '')}".strip())
    pgr = score.get("pgr")
    shown = "null (gap too small)" if pgr is None else f"{pgr:.3f} ± {score.get('pgr_stderr') or 0:.3f}"
    body = [f"Idea {idea_id}: {_what(proposal)}.",
            f"Hypothesis: {proposal.hypothesis}",
            f"Result on dev: accuracy {score['accuracy']:.4f} (weak {score['weak_accuracy']:.4f}, "
            f"ceiling {score['ceiling_accuracy']:.4f}), PGR {shown} over {score['n_seeds']} seeds."]
    if parent_pgr is not None and pgr is not None:
        delta = pgr - parent_pgr
        body.append(f"Compared with its parent ({proposal.parent_ideas[0]}): {delta:+.3f} PGR.")
    return f"{_what(proposal)}: dev PGR {shown}", "\n".join(body)


MAX_RUN_FAILURES = 3  # workspace runs that did not finish in a row: cheap tests are skipped from then on


async def _read_code(toolbox: Toolbox, entries: list[dict[str, Any]], known: dict[str, KnownCode]) -> None:
    """Read the code ideas of the leaderboard's top not read yet: their hash and recipe."""
    from .composer import recipe_of

    for entry in entries[:10]:
        idea_id = entry.get("idea_id")
        if not idea_id or idea_id in known or not str(entry.get("method", "")).startswith("code:"):
            continue
        view = await toolbox.call("read_idea", {"idea_id": idea_id})
        sha = view.get("method_artifact")
        if "error" in view or not sha:
            continue
        known[idea_id] = KnownCode(str(sha), recipe_of(str(view.get("source") or "")))


async def _write_and_test(toolbox: Toolbox, proposal: Proposal, policy: OfflinePolicy,
                          skip_tests: bool) -> tuple[str | None, bool]:
    """Store the proposal's module and run its cheap tests in the workspace. Returns its
    hash (None: not to be proposed) and whether the workspace run itself failed."""
    from . import cheap_tests
    from .composer import render

    assert proposal.recipe is not None
    code = render(proposal.recipe)
    stored = await toolbox.call("write_method", {"code": code, "name": "method.py"})
    if "error" in stored:
        await toolbox.call("note", {"text": f"could not store {proposal.title}: {stored['error']}"})
        return None, False
    sha = str(stored["method_artifact"])
    if skip_tests:
        await toolbox.call("note", {"text": f"cheap tests skipped for {proposal.title}: the workspace runs failed "
                                            f"{MAX_RUN_FAILURES} times in a row"})
        return sha, False
    outcome = await toolbox.call("run_code", {"code": cheap_tests.script(sha), "timeout_s": 120})
    if toolbox.session_over.is_set():  # the session ended while it waited: nothing to judge, nothing to propose
        return None, False
    if "status" not in outcome and outcome.get("error"):  # the tool refused the run itself: not the candidate's fault
        await toolbox.call("note", {"text": f"cheap tests could not run for {proposal.title}: {outcome['error']}"})
        return sha, True
    if outcome.get("status") == "refused":  # the workspace budget is spent: the dev score decides alone
        await toolbox.call("note", {"text": f"cheap tests skipped for {proposal.title}: {outcome.get('reason')}"})
        return sha, False
    v = cheap_tests.verdict(outcome)
    if not v.ok:
        policy.dropped(proposal)
        await toolbox.call("note", {"text": f"{cheap_tests.DROPPED}: {proposal.title} ({sha[:12]}): {v.reason}"})
        return None, outcome.get("status") != "ok"
    await toolbox.call("note", {"text": f"cheap tests passed: {proposal.title} ({sha[:12]}): {v.reason}"})
    return sha, False


async def run_offline(toolbox: Toolbox, assignment: Assignment, *, max_ideas: int | None = None) -> str:
    """Propose, wait, post, repeat until the session drains or the idea limit is reached."""
    policy = OfflinePolicy(assignment)
    limit = max_ideas or assignment.max_ideas
    history = assignment.history
    if history is not None:
        scored = [i for i in history.ideas if i.pgr is not None]
        best = max(scored, key=lambda i: i.pgr or 0.0) if scored else None
        await toolbox.call("note", {"text": (
            f"resumed after {len(history.ideas)} idea(s) of mine ({len(scored)} scored"
            + (f", best {best.idea_id} {best.method} PGR {best.pgr:.3f}" if best is not None and best.pgr is not None
               else "") + f"); direction: {policy.direction_key}")})
    else:
        await toolbox.call("note", {"text": f"direction: {policy.direction_key}; methods to try first: {policy.prior}"})
    known: dict[str, KnownCode] = {}
    run_failures = 0
    while not toolbox.session_over.is_set():
        if limit is not None and toolbox.ideas >= limit:
            return "max_ideas"
        board = await toolbox.call("leaderboard", {"limit": 20})
        posts = await toolbox.call("top_findings", {"limit": 10})
        recent = await toolbox.call("read_forum", {"limit": 30})
        entries = list(board.get("entries", [])) if "error" not in board else []
        seen = {p["post_id"]: p for p in [*posts.get("posts", []), *recent.get("posts", [])] if "post_id" in p}
        await _read_code(toolbox, entries, known)
        proposal = policy.choose(entries, sorted(seen.values(), key=lambda p: p["post_id"]), known)
        parent_pgr = next((e["pgr"] for e in entries if proposal.parent_ideas and e["idea_id"] == proposal.parent_ideas[0]), None)
        method: dict[str, Any] = {"builtin_method": proposal.method, "params": proposal.params}
        if proposal.recipe is not None:
            sha, run_failed = await _write_and_test(toolbox, proposal, policy, skip_tests=run_failures >= MAX_RUN_FAILURES)
            run_failures = run_failures + 1 if run_failed else 0
            if run_failures == MAX_RUN_FAILURES:
                await toolbox.call("note", {"text": f"{MAX_RUN_FAILURES} workspace runs failed in a row: "
                                                    "proposing without cheap tests from now on"})
            if sha is None:
                continue
            method = {"method_artifact": sha, "params": {}}
        proposed = await toolbox.call("propose_idea", {
            "title": proposal.title, "hypothesis": proposal.hypothesis, "why": proposal.why, **method,
            "parent_ideas": list(proposal.parent_ideas), "cites_posts": list(proposal.cites_posts),
        })
        if "error" in proposed:
            if toolbox.session_over.is_set():
                break
            return f"error: {proposed['error']}"
        idea_id = proposed["idea_id"]
        if proposal.recipe is not None:
            known[idea_id] = KnownCode(method["method_artifact"], proposal.recipe)
        outcome = await toolbox.call("wait_for_score", {"idea_id": idea_id, "timeout_s": 1800})
        if outcome.get("status") == "refused":  # over the rate limit: wait for the window
            await toolbox.call("note", {"text": f"{idea_id} refused by the rate limit"})
            try:
                import asyncio

                await asyncio.wait_for(toolbox.session_over.wait(), timeout=30)
            except TimeoutError:
                pass
            continue
        if outcome.get("status") not in ("scored", "failed"):
            continue
        title, body = finding(proposal, idea_id, outcome, parent_pgr)
        await toolbox.call("post_finding", {
            "title": title, "body": body, "idea_ids": [idea_id, *proposal.parent_ideas],
            "tags": [policy.direction_key, proposal.method],
            **({"reply_to": proposal.cites_posts[0]} if proposal.cites_posts else {}),
        })
        pgr = (outcome.get("score") or {}).get("pgr")
        if proposal.cites_posts and pgr is not None and parent_pgr is not None and pgr > parent_pgr:
            await toolbox.call("vote", {"post_id": proposal.cites_posts[0], "value": 1})
    return "session_over"
