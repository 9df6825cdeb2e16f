"""Event matchers: ``{key: value}`` matches a dict event whose every listed key equals the value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["EventMatcher", "MatcherSet"]

JSONScalar = str | int | float | bool
_MISSING = object()


class EventMatcher:
    """One compiled matcher; an empty spec matches every dict event."""

    __slots__ = ("_items", "spec")

    def __init__(self, spec: Mapping[str, JSONScalar]) -> None:
        self.spec = dict(spec)
        # Numbers and bools compare equal in Python (True == 1) but not in JSON: only for
        # those is the bool-ness checked too; a str compares exactly by itself.
        self._items = tuple(
            (k, v, isinstance(v, bool) if isinstance(v, int | float) else None)
            for k, v in spec.items()
        )

    def __call__(self, event: object) -> bool:
        if not isinstance(event, dict):
            return False
        for key, want, want_bool in self._items:
            got = event.get(key, _MISSING)
            if got != want or (want_bool is not None and isinstance(got, bool) is not want_bool):
                return False
        return True

    def __repr__(self) -> str:
        return f"EventMatcher({self.spec!r})"


class MatcherSet:
    """Several matchers; ``first(event)`` is the first that matches, or None."""

    __slots__ = ("matchers",)

    def __init__(self, specs: Iterable[Mapping[str, JSONScalar]]) -> None:
        self.matchers = tuple(EventMatcher(s) for s in specs)

    def first(self, event: object) -> EventMatcher | None:
        if not isinstance(event, dict):
            return None
        for m in self.matchers:
            if m(event):
                return m
        return None

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def __len__(self) -> int:
        return len(self.matchers)
