"""Names -> things, and the one "did you mean" of the suite.

A small package of its own (standard library only) so that both ``methods/`` (which never imports ``bench/``) and
``bench/`` use the same code: :func:`closest` / :func:`did_you_mean` for every suggestion an error message makes, and
:class:`Registry`, the lazy name -> object table behind the methods, the task families and the metrics.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterable, Mapping, Optional, TypeVar, Union

__all__ = ["Registry", "closest", "did_you_mean"]

T = TypeVar("T")

#: the suggestion as most messages write it: ``unknown 'lroa' (did you mean 'lora'?)``
IN_PARENS = " (did you mean {!r}?)"
#: the suggestion as a sentence of its own: ``Unknown method 'lroa'. Did you mean 'lora'? Valid ...``
SENTENCE = " Did you mean {!r}?"


def closest(name: Any, choices: Iterable[str]) -> Optional[str]:
    """The choice nearest to ``name`` (difflib's ratio, at least 0.6), or None when none is near."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(name: Any, choices: Iterable[str], template: str = IN_PARENS) -> str:
    """``template`` filled with the choice nearest to ``name`` (``" (did you mean 'x'?)"`` by default), or "" when
    none is near. ``template`` takes the choice as its one ``{}`` field (``{!r}`` quotes it)."""
    c = closest(name, choices)
    return template.format(c) if c is not None else ""


class Registry(Generic[T]):
    """A lazy table of named things.

    An entry is the thing itself or a ``"module:attribute"`` string, imported the first time the name is looked up
    (so listing the names imports nothing). ``discover``, when given, runs once before the first look-up or listing
    (e.g. importing the modules whose decorators register entries). An unknown name raises ``error(message)`` where
    ``message`` is ``unknown`` formatted with ``name`` (repr'd by the template), ``hint`` (the suggestion, ``hint``
    template) and ``known`` (the listed names joined by ", ").
    """

    def __init__(
        self,
        kind: str,
        entries: Optional[Mapping[str, Union[T, str]]] = None,
        *,
        discover: Optional[Callable[[], None]] = None,
        error: Callable[[str], Exception] = KeyError,
        unknown: str = "Unknown {kind} {name!r}.{hint} Known: {known}.",
        hint: str = SENTENCE,
        unavailable: str = "{kind} {name!r} is not available in this version ({error})",
    ) -> None:
        self.kind = kind
        self._entries: dict[str, Union[T, str]] = dict(entries or {})
        self._discover = discover
        self._discovered = discover is None
        self.error = error
        self._unknown = unknown
        self._hint = hint
        self._unavailable = unavailable

    # ------------------------------------------------------------------ filling
    def add(self, name: str, entry: Union[T, str]) -> None:
        """Register ``entry`` (or a ``"module:attribute"`` path) under ``name``; a second, different entry under the
        same name is a ValueError."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} name {name!r} registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    # ------------------------------------------------------------------ reading
    def _ready(self) -> None:
        if not self._discovered:
            self._discovered = True  # before the call: a discovered module that looks a name up does not recurse
            assert self._discover is not None
            try:
                self._discover()
            except BaseException:
                self._discovered = False  # a failed import is retried (and raises again) on the next look-up
                raise

    def __contains__(self, name: object) -> bool:
        self._ready()
        return name in self._entries

    def names(self) -> list[str]:
        """Every registered name, sorted; names starting with "_" (private: a test's own) are left out."""
        self._ready()
        return sorted(n for n in self._entries if not n.startswith("_"))

    def unknown(self, name: str, known: Optional[Iterable[str]] = None) -> Exception:
        """The error for a name that is not here (``known``: the names to list and suggest from, default
        :meth:`names`)."""
        known = list(self.names() if known is None else known)
        hint = did_you_mean(name, known, self._hint)
        return self.error(self._unknown.format(kind=self.kind, name=name, hint=hint, known=", ".join(known)))

    def get(self, name: str) -> T:
        """The entry called ``name``, imported on first use; :meth:`unknown`'s error when there is none."""
        self._ready()
        if name not in self._entries:
            raise self.unknown(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                raise self.error(self._unavailable.format(kind=self.kind, name=name, error=e)) from e
            entry = getattr(mod, attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]
