"""The one composition of conf/: the root config as `bench run` composes it, for every command and helper."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str], hydra: bool = False):
    """The composed root config, as `bench run` composes it, for every command and helper that needs one (no
    output folders, no logging setup). hydra=True keeps the `hydra` node (the sweeper's params). An override
    that does not compose raises BenchError (one line at the command line, see bench.cli.main).

    Composing reads and merges every YAML of the defaults list (~0.1 s); `bench table` and the study compose
    each run's config, often the same one, so a process composes each (overrides, hydra, cwd) once and hands
    out deep copies (~6 ms; callers may change theirs). conf/ is read as it was at the first composition; an
    override naming hydra.searchpath (folders outside conf/ that may change) is never cached."""
    if any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        return _compose(tuple(overrides), hydra)
    return copy.deepcopy(_composed(tuple(overrides), hydra, os.getcwd()))


@functools.lru_cache(maxsize=512)
def _composed(overrides: tuple[str, ...], hydra: bool, cwd: str):
    """cwd is part of the key only: the hydra node records the working folder (hydra.runtime.cwd)."""
    return _compose(overrides, hydra)


def _compose(overrides: tuple[str, ...], hydra: bool):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.errors import BenchError

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as e:
        raise BenchError(f"cannot compose {' '.join(overrides)}: {e}") from e
