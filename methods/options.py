"""A method's options, defined once: one typed config per method, validated in one place, defaults only in YAML.

Each Python method declares an :class:`Options` dataclass: one field per option and no default in Python. The
defaults are the method's preset, ``conf/method/<name>.yaml``; :meth:`Options.parse` takes a method config (the
harness passes the composed one, with every key), rejects an unknown key in one message (with the nearest valid
one), fills the keys it leaves out from the preset (so ``methods/`` alone gets the same defaults as a run) and calls
the class's :meth:`Options.check`. A method reads its options from the parsed object only, never
``cfg.get(key, default)``. The peft presets (methods/peft_generic) need no class of their own: their typed config is
the peft config class itself.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from methods.base import MethodConfigError
from registry import did_you_mean

#: the folder of the presets: ``<name>.yaml`` holds every default of method ``<name>``
PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "method"
#: keys every method accepts and ignores: its name and the learning rates a study tries (documentation of a preset)
SUITE_KEYS = ("name", "lr_grid")

O = TypeVar("O", bound="Options")


@functools.lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int, size: int) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return data if isinstance(data, dict) else {}


def preset(name: str, folder: Path | None = None) -> dict:
    """``<folder>/<name>.yaml`` (default PRESET_DIR) as a dict: the method's defaults ({} when there is none)."""
    path = Path(folder or PRESET_DIR) / f"{name}.yaml"
    try:
        stat = path.stat()
    except OSError:
        return {}
    return dict(_read(str(path), stat.st_mtime_ns, stat.st_size))


def check_train_head(value: Any) -> None:
    """The values of every method's ``train_head`` option: auto (the task decides), true or false."""
    if value not in ("auto", True, False):
        raise MethodConfigError(f"method.train_head must be auto, true or false (got {value!r})")


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of a method's typed options: subclass with one field per option and no default."""

    #: keys accepted besides the fields (and ignored)
    extra: ClassVar[tuple[str, ...]] = SUITE_KEYS

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def parse(cls: type[O], cfg: Mapping[str, Any], method: str, folder: Path | None = None) -> O:
        """The options of ``method`` from ``cfg``: unknown keys refused, absent ones from the preset
        ``<folder>/<method>.yaml`` (default PRESET_DIR), then :meth:`check`."""
        keys = cls.keys()
        unknown = [k for k in cfg if k not in keys and k not in cls.extra]
        if unknown:
            hints = ", ".join(f"{k!r}{did_you_mean(k, keys)}" for k in unknown)
            raise MethodConfigError(f"unknown {method} option(s): {hints}; valid options: {', '.join(keys) or 'none'}")
        defaults = preset(method, folder) if any(k not in cfg for k in keys) else {}
        missing = [k for k in keys if k not in cfg and k not in defaults]
        if missing:
            raise MethodConfigError(
                f"{method} option(s) {', '.join(missing)} missing: conf/method/{method}.yaml gives every option "
                "(start from it, e.g. yaml.safe_load of that file, or run through the harness)"
            )
        options = cls(**{k: cfg[k] if k in cfg else defaults[k] for k in keys})
        options.check()
        return options

    def check(self) -> None:
        """Raise MethodConfigError (one line saying what to type instead) for a bad value."""
