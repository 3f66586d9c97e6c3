"""The forum's read model: pure Python, no I/O, rebuilt from ``forum.*`` events.

Everything here is a function of the *set* of events applied, not of the order
in which they arrive: ``apply`` ignores an event id it has already seen, and
wherever two events compete the one that sorts first/last by ``(time, id)``
wins (ids are ULIDs, so that is the order they were created in). A rebuild that
scans the log and then applies what arrived meanwhile therefore ends in the
same state as a process that saw everything live.

- **posts** (``forum.posted``): keyed by ``(session_id, post_id)``; a second
  post event for the same id is ignored (the earliest one is the post).
- **votes** (``forum.voted``): one per agent per post; the agent's latest vote
  counts. ``vote_score`` is the sum of the counted votes (+1/-1), ``votes``
  their number. Votes for a post not seen yet are kept and count once it is.
- **moderation** (``forum.moderated``): the latest ``hide``/``restore`` of a post
  decides whether it is hidden. Hidden posts appear in no query answer.
- **the moderation rule** (:func:`ForumModel.moderation_reason`), which the
  service turns into ``forum.moderated`` events: a post is hidden when its body
  is longer than :data:`MAX_BODY_CHARS` characters, or when it is an exact
  duplicate of an earlier post in the same session: same agent, same title,
  same body and same ``reply_to`` (so the same short reply under two different
  posts is not a duplicate). The earliest post of such a group stays visible.
  A post that already has a moderation event (say an operator's ``restore``)
  is never moderated again by the rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import Event, EventType
from schemas.forum import ForumModerated, ForumPosted, ForumVoted

MAX_BODY_CHARS = 20_000
# In search, one word repeated in a body counts at most this many times.
BODY_TERM_CAP = 5
_WORD = re.compile(r"\w+")

OrderKey = tuple[datetime, str]  # (event time, event id): creation order


class UnknownPost(LookupError):
    """A query named a post the forum does not know."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else "unknown post"


class PostHidden(LookupError):
    """A query named a post that moderation has hidden."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "post hidden"


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(slots=True)
class StoredPost:
    post_id: str
    session_id: str
    agent_id: str
    title: str
    body: str
    reply_to: str | None
    idea_ids: list[str]
    experiment_ids: list[str]
    tags: list[str]
    time: datetime
    event_id: str

    @property
    def order(self) -> OrderKey:
        return (self.time, self.event_id)

    @property
    def duplicate_key(self) -> tuple[str, str | None, str, str]:
        return (self.agent_id, self.reply_to, self.title, self.body)


@dataclass(slots=True)
class Moderation:
    order: OrderKey
    action: str  # "hide" | "restore"
    reason: str


@dataclass(slots=True)
class SessionForum:
    """Everything one session's forum holds."""

    posts: dict[str, StoredPost] = field(default_factory=dict)
    # post_id -> agent_id -> (order, value): the latest vote per agent wins
    votes: dict[str, dict[str, tuple[OrderKey, int]]] = field(default_factory=dict)
    moderation: dict[str, Moderation] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)  # post_id -> reply post ids
    duplicates: dict[tuple[str, str | None, str, str], set[str]] = field(default_factory=dict)


class ForumModel:
    """The read model. ``apply`` events; ask ``list``/``search``/``top``/``thread``/``stats``."""

    __slots__ = ("sessions", "seen", "applied")

    def __init__(self) -> None:
        self.sessions: dict[str, SessionForum] = {}
        self.seen: set[str] = set()
        self.applied = 0

    # -- applying events ------------------------------------------------------

    def apply(self, event: Event) -> bool:
        """Apply one event; False when its id was seen before or it is not a forum event."""
        if event.id in self.seen:
            return False
        if event.type not in (EventType.FORUM_POSTED, EventType.FORUM_VOTED, EventType.FORUM_MODERATED):
            return False
        self.seen.add(event.id)
        self.applied += 1
        forum = self.sessions.setdefault(event.session_id, SessionForum())
        order: OrderKey = (event.time, event.id)
        payload = event.payload
        if isinstance(payload, ForumPosted):
            self._apply_post(forum, event, payload)
        elif isinstance(payload, ForumVoted):
            ballots = forum.votes.setdefault(payload.post_id, {})
            previous = ballots.get(payload.agent_id)
            if previous is None or previous[0] < order:
                ballots[payload.agent_id] = (order, payload.value)
        elif isinstance(payload, ForumModerated):
            current = forum.moderation.get(payload.post_id)
            if current is None or current.order < order:
                forum.moderation[payload.post_id] = Moderation(order, payload.action, payload.reason)
        return True

    def apply_all(self, events: Iterable[Event]) -> int:
        return sum(self.apply(e) for e in events)

    @staticmethod
    def _apply_post(forum: SessionForum, event: Event, p: ForumPosted) -> None:
        post = StoredPost(
            post_id=p.post_id,
            session_id=event.session_id,
            agent_id=p.agent_id,
            title=p.title,
            body=p.body,
            reply_to=p.reply_to,
            idea_ids=list(p.idea_ids),
            experiment_ids=list(p.experiment_ids),
            tags=list(p.tags),
            time=event.time,
            event_id=event.id,
        )
        existing = forum.posts.get(p.post_id)
        if existing is not None:
            if existing.order <= post.order:
                return  # the earliest event with this post id is the post
            ForumModel._unindex(forum, existing)
        forum.posts[p.post_id] = post
        if post.reply_to is not None:
            forum.children.setdefault(post.reply_to, set()).add(post.post_id)
        forum.duplicates.setdefault(post.duplicate_key, set()).add(post.post_id)

    @staticmethod
    def _unindex(forum: SessionForum, post: StoredPost) -> None:
        if post.reply_to is not None:
            forum.children.get(post.reply_to, set()).discard(post.post_id)
        forum.duplicates.get(post.duplicate_key, set()).discard(post.post_id)

    # -- moderation -----------------------------------------------------------

    def hidden(self, session_id: str, post_id: str) -> bool:
        forum = self.sessions.get(session_id)
        mod = forum.moderation.get(post_id) if forum else None
        return mod is not None and mod.action == "hide"

    def moderation_reason(self, session_id: str, post_id: str) -> str | None:
        """Why the rule hides this post, or None (see the module docstring)."""
        forum = self.sessions.get(session_id)
        post = forum.posts.get(post_id) if forum else None
        if forum is None or post is None:
            return None
        if len(post.body) > MAX_BODY_CHARS:
            return f"body of {len(post.body):,} characters exceeds the limit of {MAX_BODY_CHARS:,}"
        group = forum.duplicates.get(post.duplicate_key, set())
        if len(group) > 1:
            first = min((forum.posts[pid] for pid in group), key=lambda q: q.order)
            if first.post_id != post_id:
                return f"exact duplicate of post {first.post_id} (same agent, title, body and reply_to)"
        return None

    def due_moderation(self, session_id: str | None = None, post_id: str | None = None) -> list[tuple[str, str, str]]:
        """(session_id, post_id, reason) for every post the rule hides that has no
        moderation event yet. With ``post_id``: that post and its duplicates only."""
        due = []
        for sid, pid in self._moderation_candidates(session_id, post_id):
            forum = self.sessions[sid]
            if pid in forum.moderation:
                continue
            reason = self.moderation_reason(sid, pid)
            if reason is not None:
                due.append((sid, pid, reason))
        return sorted(due)

    def _moderation_candidates(self, session_id: str | None, post_id: str | None) -> Iterator[tuple[str, str]]:
        sessions = [session_id] if session_id is not None else list(self.sessions)
        for sid in sessions:
            forum = self.sessions.get(sid)
            if forum is None:
                continue
            if post_id is None:
                yield from ((sid, pid) for pid in forum.posts)
            elif post_id in forum.posts:
                yield from ((sid, pid) for pid in forum.duplicates.get(forum.posts[post_id].duplicate_key, {post_id}))

    # -- views ----------------------------------------------------------------

    def _visible(self, session_id: str) -> list[StoredPost]:
        forum = self.sessions.get(session_id)
        if forum is None:
            return []
        return [p for p in forum.posts.values() if not self.hidden(session_id, p.post_id)]

    def _tally(self, forum: SessionForum, post_id: str) -> tuple[int, int]:
        ballots = forum.votes.get(post_id, {})
        return sum(v for _, v in ballots.values()), len(ballots)

    def _reply_count(self, forum: SessionForum, post: StoredPost) -> int:
        return sum(
            1 for pid in forum.children.get(post.post_id, ()) if not self.hidden(post.session_id, pid)
        )

    def view(self, post: StoredPost) -> dict[str, Any]:
        """A post as queries answer it (the ``Post`` of the query contract)."""
        forum = self.sessions[post.session_id]
        score, n_votes = self._tally(forum, post.post_id)
        return {
            "post_id": post.post_id,
            "session_id": post.session_id,
            "agent_id": post.agent_id,
            "title": post.title,
            "body": post.body,
            "reply_to": post.reply_to,
            "idea_ids": list(post.idea_ids),
            "experiment_ids": list(post.experiment_ids),
            "tags": list(post.tags),
            "time": post.time.isoformat(),
            "vote_score": score,
            "votes": n_votes,
            "replies": self._reply_count(forum, post),
        }

    # -- queries --------------------------------------------------------------

    def list_posts(self, session_id: str, limit: int = 20, tag: str | None = None,
                   idea_id: str | None = None) -> list[dict[str, Any]]:
        """Visible posts and replies, newest first; with ``tag``, only posts carrying it
        (case-insensitive); with ``idea_id``, only posts about that idea."""
        posts = self._visible(session_id)
        if tag is not None:
            wanted = tag.strip().lower()
            posts = [p for p in posts if wanted in (t.lower() for t in p.tags)]
        if idea_id is not None:
            posts = [p for p in posts if idea_id in p.idea_ids]
        posts.sort(key=lambda p: p.order, reverse=True)
        return [self.view(p) for p in posts[:limit]]

    def search(self, session_id: str, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """Visible posts matching ``query``, best first.

        The query is split into lower-case words; a query word matches a word of
        the post that *starts with* it ("filter" matches "filtering"). Ranking:
        1. how many distinct query words match anywhere (title, body or tags);
        2. a weighted count of matches: 3 per title word, 2 per tag word, 1 per
           body word (at most 5 per query word from the body, so a long body
           cannot win by repetition);
        3. vote score, then newest.
        Posts that match no query word are not returned.
        """
        terms = sorted(set(words(query)))
        if not terms:
            raise ValueError(f"the query {query!r} has no words to search for")
        forum = self.sessions.get(session_id)
        ranked = []
        for post in self._visible(session_id):
            title, body = Counter(words(post.title)), Counter(words(post.body))
            tags = Counter(w for t in post.tags for w in words(t))
            matched = weight = 0
            for term in terms:
                t = sum(c for w, c in title.items() if w.startswith(term))
                g = sum(c for w, c in tags.items() if w.startswith(term))
                b = min(BODY_TERM_CAP, sum(c for w, c in body.items() if w.startswith(term)))
                if t or g or b:
                    matched += 1
                    weight += 3 * t + 2 * g + b
            if matched:
                assert forum is not None
                score, _ = self._tally(forum, post.post_id)
                ranked.append(((matched, weight, score, post.order), post))
        ranked.sort(key=lambda item: item[0], reverse=True)
        return [self.view(p) for _, p in ranked[:limit]]

    def top(self, session_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """"Top findings": visible posts and replies by vote score, then number of
        (visible) replies, then newest."""
        forum = self.sessions.get(session_id)
        if forum is None:
            return []

        def rank(p: StoredPost) -> tuple[int, int, OrderKey]:
            return (self._tally(forum, p.post_id)[0], self._reply_count(forum, p), p.order)

        posts = sorted(self._visible(session_id), key=rank, reverse=True)
        return [self.view(p) for p in posts[:limit]]

    def find(self, post_id: str, session_id: str | None = None) -> StoredPost:
        sessions = [session_id] if session_id is not None else sorted(self.sessions)
        found = [
            self.sessions[s].posts[post_id]
            for s in sessions
            if s in self.sessions and post_id in self.sessions[s].posts
        ]
        if not found:
            where = f" in session {session_id!r}" if session_id is not None else ""
            raise UnknownPost(f"no post {post_id!r}{where}")
        if len(found) > 1:
            raise UnknownPost(
                f"post id {post_id!r} exists in several sessions ({', '.join(p.session_id for p in found)}); "
                "give session_id"
            )
        return found[0]

    def thread(self, post_id: str, session_id: str | None = None) -> dict[str, Any]:
        """A post and its visible direct replies, oldest reply first."""
        post = self.find(post_id, session_id)
        if self.hidden(post.session_id, post_id):
            mod = self.sessions[post.session_id].moderation[post_id]
            raise PostHidden(f"post {post_id!r} was hidden by moderation: {mod.reason}")
        forum = self.sessions[post.session_id]
        replies = [
            forum.posts[pid]
            for pid in forum.children.get(post_id, ())
            if pid in forum.posts and not self.hidden(post.session_id, pid)
        ]
        replies.sort(key=lambda p: p.order)
        return {"post": self.view(post), "replies": [self.view(r) for r in replies]}

    def stats(self, session_id: str) -> dict[str, int]:
        """Visible top-level posts and replies, counted votes on known posts,
        agents that posted or voted, and hidden posts."""
        forum = self.sessions.get(session_id)
        if forum is None:
            return {"posts": 0, "replies": 0, "votes": 0, "agents": 0, "hidden": 0}
        visible = self._visible(session_id)
        agents = {p.agent_id for p in forum.posts.values()}
        agents.update(a for ballots in forum.votes.values() for a in ballots)
        return {
            "posts": sum(1 for p in visible if p.reply_to is None),
            "replies": sum(1 for p in visible if p.reply_to is not None),
            "votes": sum(len(b) for pid, b in forum.votes.items() if pid in forum.posts),
            "agents": len(agents),
            "hidden": len(forum.posts) - len(visible),
        }
