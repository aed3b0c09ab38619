"""Command-line overrides: the splitter of the commands that take several methods at once (params, perf), which
method.<key>=v applies to which method, the values of a Hydra sweep string, and one clean command line."""

from __future__ import annotations

from typing import Any, NamedTuple


class SplitArgs(NamedTuple):
    methods: list[str]  # from method=a,b,c (in order; empty when none was given)
    method: list[str]  # method.<key>=v overrides as given (with a leading + when given so)
    own: dict[str, list[str]]  # <prefix>.<key>=v for each of the command's own prefixes (e.g. perf), without + / ~
    rest: list[str]  # everything else, for compose


def split_overrides(argv: list[str], command: str, own: tuple[str, ...] = ()) -> SplitArgs:
    """The one splitter of the commands that take several methods at once (params, perf): -m is dropped (they run
    every listed method anyway); an argument that is not key=value is an error."""
    from bench.errors import BenchError

    methods: list[str] = []
    method: list[str] = []
    mine: dict[str, list[str]] = {p: [] for p in own}
    rest: list[str] = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        if "=" not in arg:
            raise BenchError(f"{command} takes key=value overrides (got {arg!r}); "
                             f"e.g. python -m bench {command} method=full,lora")
        key, value = arg.split("=", 1)
        bare = key.lstrip("+~")
        prefix = bare.split(".", 1)[0]
        if bare == "method":
            methods += [m.strip() for m in value.strip("[]").split(",") if m.strip()]
        elif bare.startswith("method."):
            method.append(arg)
        elif "." in bare and prefix in mine:
            mine[prefix].append(f"{bare}={value}")
        else:
            rest.append(arg)
    return SplitArgs(methods, method, mine, rest)


def method_overrides_for(method_cfg, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(applicable, skipped): a method.<key>=v override applies to a method whose config has <key>;
    +method.<key>=v adds the key, so it applies to every method."""
    applicable, skipped = [], []
    for o in overrides:
        key = o.split("=", 1)[0]
        top = key.lstrip("+~").split(".")[1]
        (applicable if key.startswith("+") or top in method_cfg else skipped).append(o)
    return applicable, skipped


def sweep_values(key: str, value: Any) -> list[str]:
    """The values of a Hydra sweep string such as '1,2,3' or 'range(1,4)'."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.get_value_element_as_str())]


def merge_overrides(overrides: list[str]) -> list[str]:
    """Later overrides of the same key replace earlier ones (in place): one clean command line."""
    out: dict[str, str] = {}
    for o in overrides:
        out[o.split("=", 1)[0].lstrip("+~")] = o
    return list(out.values())


def sweep_lists(argv: list[str], params) -> dict[str, list[str]]:
    """Every value each swept key takes: the experiment's hydra.sweeper.params, then the command line's."""
    out = {k: sweep_values(k, v) for k, v in (params or {}).items()}
    for a in argv:
        if "=" in a and not a.startswith(("-", "hydra.")):
            key, value = a.split("=", 1)
            out[key.lstrip("+~")] = sweep_values(key.lstrip("+~"), value)
    return out


def first_values(argv: list[str]) -> list[str]:
    """The overrides with every swept key at its first value: the one config a whole sweep is checked on."""
    out = []
    for a in argv:
        if a.startswith("-"):
            continue
        if "=" not in a:  # ~key deletes a key
            out.append(a)
            continue
        key, value = a.split("=", 1)
        vals = sweep_values(key.lstrip("+~"), value)
        out.append(f"{key}={vals[0]}" if len(vals) > 1 else a)
    return out
