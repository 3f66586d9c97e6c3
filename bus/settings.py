"""How a process finds the bus: ``AAR_NATS_URL``, ``AAR_NATS_USER``, ``AAR_NATS_PASSWORD``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from .roles import Credentials, Role


class BusSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None

    @property
    def role(self) -> Role | None:
        try:
            return Role(self.user) if self.user else None
        except ValueError:
            return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BusSettings":
        env = os.environ if env is None else env
        return cls(
            url=env.get("AAR_NATS_URL", "nats://127.0.0.1:4222"),
            user=env.get("AAR_NATS_USER") or None,
            password=env.get("AAR_NATS_PASSWORD") or None,
        )

    @classmethod
    def for_role(cls, url: str, credentials: Credentials, role: Role) -> "BusSettings":
        return cls(url=url, user=role.value, password=credentials.password(role))

    def to_env(self) -> dict[str, str]:
        env = {"AAR_NATS_URL": self.url}
        if self.user:
            env["AAR_NATS_USER"] = self.user
        if self.password:
            env["AAR_NATS_PASSWORD"] = self.password
        return env
