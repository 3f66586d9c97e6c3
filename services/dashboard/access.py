"""Who may open the dashboard.

- Bound to a loopback address (the default, 127.0.0.1), it is this machine's users'
  only. Requests must name a loopback host too (``Host:``), so that a web page the user
  visits cannot reach it under a domain that resolves to 127.0.0.1 (DNS rebinding).
- Bound anywhere else, every request needs the dashboard's token: generated once,
  stored in ``AAR_HOME/dashboard/token`` (mode 0600) and printed once when made.
  A browser presents it once as ``?token=...`` and gets it back as an HttpOnly cookie;
  a script sends ``Authorization: Bearer ...``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

COOKIE = "aar_dashboard"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a ``Host:`` header, without its port."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at ``path`` (mode 0600), made when there is none; returns
    (token, whether it was made now)."""
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token, False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, True


class Access:
    """The rule for one bind: ``token`` None means loopback-only, no token."""

    def __init__(self, bind_host: str, token: str | None) -> None:
        if token is None and not is_loopback(bind_host):
            raise ValueError(f"the dashboard bound to {bind_host} needs a token (only a loopback bind goes without)")
        self.bind_host = bind_host
        self.token = token

    def allows(self, *, host_header: str, presented: str | None) -> tuple[bool, str]:
        """Whether a request may be answered, and why not."""
        if self.token is None:
            if not is_loopback(host_name(host_header)):
                return False, "this dashboard answers loopback host names only"
            return True, ""
        if presented is None or not hmac.compare_digest(presented.encode(), self.token.encode()):
            return False, "this dashboard needs its token (AAR_HOME/dashboard/token): open it with ?token=..."
        return True, ""
