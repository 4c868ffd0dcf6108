"""Name -> class registries, so that a config picks model parts by name.

Adding a core is one new file with one decorator::

    from neurotwin.models.registry import CORES

    @CORES.register("mycore")
    class MyCore(Core): ...

and one import line in `neurotwin/models/cores/__init__.py` (so that the module runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from neurotwin.errors import ConfigError

T = TypeVar("T")


class Registry:
    """A named table of classes; `register(name)` is a class decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(cls: T) -> T:
            if name in self._table and self._table[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._table[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return add

    def get(self, name: str) -> Any:
        try:
            return self._table[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {sorted(self._table)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


CORES = Registry("core")
READOUTS = Registry("readout")
ACTIVATIONS = Registry("output activation")
BACKBONES = Registry("backbone source")
