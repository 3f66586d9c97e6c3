"""A scripted stand-in for the Anthropic Messages API, served over real HTTP.

``FakeAnthropic`` runs an ``http.server`` in a thread on a free port and answers
``POST /v1/messages`` from a script (after checking the request the way the real API
would: roles, tool_use/tool_result pairing, cache breakpoints; see :func:`validate`): each request takes the next :class:`Reply`
(a message, an API error with its status, or a dropped connection). When the script
runs out, ``fallback`` answers (by default a plain text reply, so a loop ends).
Every request is kept (path, headers, JSON body) for the test to inspect.

Point the SDK at it with ``anthropic.AsyncAnthropic(base_url=fake.url, api_key=...)``
or ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, arguments: dict[str, Any] | None = None, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name, "input": arguments or {}}


def usage(input_tokens: int = 100, output_tokens: int = 20, cache_read: int = 0, cache_write: int = 0) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write}


def message(*content: dict[str, Any], stop_reason: str | None = None, model: str | None = None,
            tokens: dict[str, Any] | None = None, **reply: Any) -> Reply:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    body = {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": tokens or usage()}
    return Reply(body=body, **reply)


def error(status: int, kind: str, msg: str = "", **reply: Any) -> Reply:
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": msg or kind}}, **reply)


def overloaded(**reply: Any) -> Reply:
    return error(529, "overloaded_error", "Overloaded", **reply)


def rate_limited(retry_after_s: float | None = None) -> Reply:
    headers = {} if retry_after_s is None else {"retry-after": str(retry_after_s)}
    return error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit", headers=headers)


def dropped() -> Reply:
    return Reply(drop=True)


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def validate(body: dict[str, Any]) -> str | None:
    """What the real API would refuse in a request body (the parts the agent loop can get wrong)."""
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    if not messages or messages[-1]["role"] != "user":
        return "messages: the conversation must end with a user message"
    system = body.get("system") or []
    marks = sum("cache_control" in b for b in (system if isinstance(system, list) else []))
    marks += sum("cache_control" in t for t in body.get("tools") or [])
    for i, m in enumerate(messages):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            return f"messages.{i}: roles must alternate, starting with user"
        blocks = _blocks(m["content"])
        if not blocks:
            return f"messages.{i}: content must be non-empty"
        marks += sum("cache_control" in b for b in blocks)
        if any(b["type"] == "text" and not b["text"] for b in blocks):
            return f"messages.{i}: text content blocks must be non-empty"
        if m["role"] != "user":
            continue
        previous = _blocks(messages[i - 1]["content"]) if i else []
        uses = [b["id"] for b in previous if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if sorted(uses) != sorted(results):
            return f"messages.{i}: each tool_use needs exactly one tool_result in the next message: {uses} vs {results}"
        if results and any(b["type"] == "tool_result" for b in blocks[len(results):]):
            return f"messages.{i}: tool_result blocks must come first"
    if marks > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {marks}."
    return None


class FakeAnthropic:
    def __init__(self, script: list[Reply] | None = None,
                 fallback: Callable[[dict[str, Any]], Reply] | None = None) -> None:
        self.script = list(script or [])
        self.fallback = fallback or (lambda body: message(text("Nothing more to do.")))
        self.requests: list[Seen] = []
        self.invalid: list[str] = []  # what validate() refused
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw or b"{}")
                with fake._lock:
                    fake.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    if self.path.split("?")[0] != "/v1/messages":
                        reply = error(404, "not_found_error", f"no route {self.path}")
                    elif (problem := validate(body)) is not None:
                        reply = error(400, "invalid_request_error", problem)
                        fake.invalid.append(problem)
                    elif fake.script:
                        reply = fake.script.pop(0)
                    else:
                        reply = fake.fallback(body)
                if reply.body is not None and reply.body.get("type") == "message" and reply.body["model"] is None:
                    reply.body = {**reply.body, "model": body.get("model")}  # echo the requested model
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    return
                data = json.dumps(reply.body or {}).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{next(_ids):06d}")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-anthropic", daemon=True)

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def messages_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages"]
