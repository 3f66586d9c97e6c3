"""How a process finds the bus: ``AAR_NATS_URL``, ``AAR_NATS_USER`` (its identity),
``AAR_NATS_PASSWORD`` and, when the identity's name does not say it, ``AAR_NATS_ROLE``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from core.paths import AarHome, read_run_file

from .roles import Credentials, Role, role_of


class BusSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None  # the identity (one NATS user per process identity)
    password: str | None = None
    role_name: str | None = None  # None: derived from the identity's name

    @property
    def role(self) -> Role | None:
        try:
            if self.role_name:
                return Role(self.role_name)
            return role_of(self.user) if self.user else None
        except ValueError:
            return None

    @property
    def identity(self) -> str:
        return self.user or Role.ADMIN.value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BusSettings:
        env = os.environ if env is None else env
        return cls(
            url=env.get("AAR_NATS_URL", "nats://127.0.0.1:4222"),
            user=env.get("AAR_NATS_USER") or None,
            password=env.get("AAR_NATS_PASSWORD") or None,
            role_name=env.get("AAR_NATS_ROLE") or None,
        )

    @classmethod
    def for_role(cls, url: str, credentials: Credentials, role: Role) -> BusSettings:
        """The role's own identity (named like the role)."""
        return cls(url=url, user=role.value, password=credentials.password(role), role_name=role.value)

    @classmethod
    def for_identity(cls, url: str, credentials: Credentials, identity: str) -> BusSettings:
        return cls(url=url, user=identity, password=credentials.password(identity),
                   role_name=credentials.role(identity).value)

    def to_env(self) -> dict[str, str]:
        env = {"AAR_NATS_URL": self.url}
        if self.user:
            env["AAR_NATS_USER"] = self.user
        if self.password:
            env["AAR_NATS_PASSWORD"] = self.password
        if self.role_name:
            env["AAR_NATS_ROLE"] = self.role_name
        return env


def admin_settings_from_home(home: AarHome) -> BusSettings | None:
    """The admin connection to the stack running on ``home`` (None when none runs)."""
    run = read_run_file(home)
    if run is None:
        return None
    creds_path = home.nats / "credentials.json"
    if not creds_path.exists():
        return None
    return BusSettings.for_role(str(run["url"]), Credentials.load_or_create(creds_path), Role.ADMIN)
