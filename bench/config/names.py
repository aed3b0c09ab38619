"""The names a config group offers and the one line for a name it lacks: conf/<group>/*.yaml (and the
hydra.searchpath folders), each unknown name with its closest known one. `bench run` and `bench params`
both check <group>=<name> overrides here before Hydra composes."""

from __future__ import annotations

from pathlib import Path

from bench.config.compose import CONF_DIR
from registry import did_you_mean


NAMED_GROUPS = ("method", "task", "model", "train", "experiment", "launcher")  # conf/<group>/<name>.yaml


def known_names(group: str, search: tuple[Path, ...] = ()) -> list[str]:
    """The config files of a group: conf/<group>/ and <dir>/<group>/ for each hydra.searchpath folder."""
    return sorted({p.stem for d in (CONF_DIR, *search) for p in (Path(d) / group).glob("*.yaml")})


def searchpath_dirs(argv: list[str]) -> tuple[Path, ...]:
    """The local folders of a hydra.searchpath=[file:///abs/dir, ...] override (pkg:// entries are left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    out: list[Path] = []
    for arg in argv:
        if arg.lstrip("+").split("=", 1)[0] != "hydra.searchpath":
            continue
        try:
            value = OverridesParser.create().parse_override(arg.lstrip("+")).value()
        except (HydraException, ValueError, TypeError):
            continue
        for item in value if isinstance(value, list) else [value]:
            item = str(item)
            if item.startswith("file://"):
                out.append(Path(item[len("file://"):]))
            elif "://" not in item:
                out.append(Path(item))
    return tuple(out)


def unknown_names_message(group: str, names: list[str], known: list[str]) -> str | None:
    """The one line for names that are not in conf/<group>/ (None when all are): each with its closest known
    name, then every known one. `bench params` and `bench run` both say it."""
    unknown = [n for n in names if n not in known]
    if not unknown:
        return None
    hints = [f"{n!r}{did_you_mean(n, known)}" for n in unknown]
    return f"unknown {group} {', '.join(hints)}; known: {', '.join(known)}"


def check_group_names(argv: list[str]) -> None:
    """Raise BenchError with that line for the first <group>=<name> override (sweeps too: method=lora,lroa) that
    names no file under conf/<group>/, before Hydra would print its option list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from bench.errors import BenchError

    parser = OverridesParser.create()
    search = searchpath_dirs(argv)
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "~")):
            continue
        key = arg.split("=", 1)[0].lstrip("+")
        if key not in NAMED_GROUPS:
            continue
        try:
            o = parser.parse_override(arg)
            names = ([str(v) for v in o.sweep_string_iterator()] if o.is_sweep_override()
                     else [str(o.get_value_element_as_str())])
        except (HydraException, ValueError, TypeError):  # left to Hydra, which names the syntax error
            continue
        message = unknown_names_message(key, [n for n in names if n != "null"], known_names(key, search))
        if message:
            raise BenchError(message)
