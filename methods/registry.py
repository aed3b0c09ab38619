"""Name -> method registry. Each sub-package of ``methods/`` registers itself on import.

Besides the Python methods, a *preset* is a method made of one YAML file: a ``conf/method/<name>.yaml`` whose
``peft_type`` key names a peft tuner (``method=dora``, ``method=vera``, ...). Presets are served by the generic
peft method (methods/peft_generic.py) under their own name; a preset in a folder of the user's own (Hydra's
``hydra.searchpath``) is recognised from the composed config it arrives with (``get_method(name, cfg)``).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Type

from methods.base import Method

_REGISTRY: dict[str, Type[Method]] = {}
_DISCOVERED = False
#: folders whose ``<name>.yaml`` files with a ``peft_type`` key are presets of the generic peft method
PRESET_DIRS: list[Path] = [Path(__file__).resolve().parents[1] / "conf" / "method"]
GENERIC = "peft"


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" (the one suggestion helper of methods/)."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def register(cls: Type[Method]) -> Type[Method]:
    """Class decorator: ``@register`` on a Method subclass with a ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if info.name not in {"base", "registry", "targets"}:
            importlib.import_module(f"methods.{info.name}")
    _DISCOVERED = True


def presets() -> dict[str, str]:
    """Preset name -> peft type, read from the ``peft_type`` key of each YAML in PRESET_DIRS."""
    import yaml

    out: dict[str, str] = {}
    for folder in PRESET_DIRS:
        for file in sorted(Path(folder).glob("*.yaml")):
            try:
                data = yaml.safe_load(file.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and data.get("peft_type") and data.get("name", file.stem) == file.stem:
                out.setdefault(file.stem, str(data["peft_type"]))
    return out


def available() -> list[str]:
    """Every method name: the Python methods and the one-YAML peft presets (a name starting with '_' is private: a
    test's own registration, reachable by get_method, never listed)."""
    _discover()
    return sorted(n for n in set(_REGISTRY) | set(presets()) if not n.startswith("_"))


def is_method(name: str) -> bool:
    """A registered method or preset, private ('_' names, a test's own) included."""
    _discover()
    return name in _REGISTRY or name in presets()


def get_method(name: str, cfg: Optional[Mapping[str, Any]] = None) -> Method:
    """The method called ``name``. ``cfg`` (the method's config): a name no Python method has is a peft preset when
    its config carries ``peft_type`` (a preset from the user's own search-path folder)."""
    _discover()
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name in presets() or (cfg is not None and cfg.get("peft_type")):
        method = _REGISTRY[GENERIC]()
        method.name = name
        return method
    known = available()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownMethodError(
        f"Unknown method {name!r}.{hint} Valid methods: {', '.join(known)} "
        f"(choose one with method=<name>, or method=peft method.peft_type=<TYPE>)."
    )
