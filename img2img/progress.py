"""How the library reports progress without printing: the CLI passes a rich implementation,
the Python API a silent one (or the caller's own)."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def start(self, total: int, done: int, description: str) -> None: ...
    def update(self, done: int, info: str = "") -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


class Silent:
    """Reports nothing: the default of the Python API."""

    def start(self, total: int, done: int, description: str) -> None:
        pass

    def update(self, done: int, info: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass
