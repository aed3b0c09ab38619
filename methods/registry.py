"""Name -> method registry. Each sub-package of ``methods/`` registers itself on import.

Besides the Python methods, a *preset* is a method made of one YAML file: a ``conf/method/<name>.yaml`` whose
``peft_type`` key names a peft tuner (``method=dora``, ``method=vera``, ...). Presets are served by the generic
peft method (methods/peft_generic.py) under their own name; a preset in a folder of the user's own (Hydra's
``hydra.searchpath``) is recognised from the composed config it arrives with (``get_method(name, cfg)``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Mapping, Optional, Type

from methods.base import Method
from registry import Registry, did_you_mean

__all__ = ["GENERIC", "METHODS", "PRESET_DIRS", "UnknownMethodError", "available", "did_you_mean", "get_method",
           "is_method", "presets", "register"]
#: folders whose ``<name>.yaml`` files with a ``peft_type`` key are presets of the generic peft method
PRESET_DIRS: list[Path] = [Path(__file__).resolve().parents[1] / "conf" / "method"]
GENERIC = "peft"


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def _discover() -> None:
    """Import every module of methods/ once: their ``@register`` decorators fill METHODS."""
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if info.name not in {"base", "registry", "targets", "options"}:
            importlib.import_module(f"methods.{info.name}")


#: the Python methods (Method subclasses) by name; the one-YAML peft presets are served by GENERIC (get_method)
METHODS: Registry[Type[Method]] = Registry(
    "method",
    discover=_discover,
    error=UnknownMethodError,
    unknown="Unknown method {name!r}.{hint} Valid methods: {known} "
    "(choose one with method=<name>, or method=peft method.peft_type=<TYPE>).",
)


def register(cls: Type[Method]) -> Type[Method]:
    """Class decorator: ``@register`` on a Method subclass with a ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS.add(cls.name, cls)
    return cls


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
    return sorted(set(METHODS.names()) | {n for n in presets() if not n.startswith("_")})


def is_method(name: str) -> bool:
    """A registered method or preset, private ('_' names, a test's own) included."""
    return name in METHODS or name in presets()


def get_method(name: str, cfg: Optional[Mapping[str, Any]] = None) -> Method:
    """The method called ``name``. ``cfg`` (the method's config): a name no Python method has is a peft preset when
    its config carries ``peft_type`` (a preset from the user's own search-path folder)."""
    if name in METHODS:
        return METHODS.get(name)()
    if name in presets() or (cfg is not None and cfg.get("peft_type")):
        method = METHODS.get(GENERIC)()
        method.name = name
        return method
    raise METHODS.unknown(name, available())
