"""Errors the trainer raises. Each message says what to do about it."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class for every error raised by the ``trainer`` package."""


class UnknownNameError(TrainerError, LookupError):
    """A dataset, backbone or method name that is not in its registry."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {', '.join(self.known)}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


class MissingDependencyError(TrainerError, ImportError):
    """An optional package is not installed."""

    def __init__(self, package: str, needed_for: str) -> None:
        self.package = package
        super().__init__(f"{needed_for} needs the Python package {package!r}: pip install {package}")


class UnavailableError(TrainerError):
    """A resource needs the network (model/dataset hub) and could not be fetched."""


class IntegrityError(TrainerError):
    """Downloaded bytes do not match their pinned hash."""


class MethodError(TrainerError):
    """A method returned something that is not a valid prediction."""
