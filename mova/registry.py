"""One registry type for every name -> thing table in Mova (experts, fusions, position schemes, templates,
losses, rewards, judges, evaluation tasks, strategies, commands, ...).

A :class:`Registry` is a ``dict`` (so ``name in R``, ``R[name]``, ``sorted(R)`` all work) whose failed lookups
raise :class:`~mova.errors.UnknownNameError` listing what is registered, and whose ``register`` works as a
decorator or a plain call. A second registration under a taken name is refused, so two plug-ins cannot
silently replace each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from mova.errors import MovaError, UnknownNameError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Names to things of one ``kind`` (the word used in error messages: ``"expert family"``, ``"reward"``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise UnknownNameError(self.kind, name, self.keys())

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None, *, replace: bool = False) -> Any:
        """``@R.register("name")`` on a class or function, or ``R.register("name", obj)``; returns ``obj``."""

        def add(item: T) -> T:
            if name in self and not replace and self[name] is not item:
                raise MovaError(f"{self.kind} {name!r} is registered already ({self[name]!r})")
            self[name] = item
            return item

        return add if obj is None else add(obj)

    def get_or_raise(self, name: str) -> T:
        """``self[name]``, spelled out where a reader may not expect a dict to raise a helpful error."""
        return self[name]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self)})"
