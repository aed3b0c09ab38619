"""The identity of one run: the config its record stores, the config hash, the record's path.

`bench run` writes its record under this identity, `bench table` (paper protocols and studies) and the golden
test find runs by it, and `bench perf` times the config it names. From a composed config (bench.config.compose):
the study's per-method settings are merged into ``method`` (bench.config.study.apply_method_cfg, in place: what trains
is what is hashed), the ``hydra`` node is dropped, and when the study has an lr grid and ``study.lr_index`` is one of
its entries, ``train.lr`` is that entry's learning rate (bench.config.study.grid_config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.records import store as records


@dataclass(frozen=True)
class RunIdentity:
    config: dict  # the resolved config, as the record stores it
    hash: str  # bench.records.store.config_hash(config)
    path: Path  # the record's file under the results folder

    def at(self, seed: int, lr_index: int) -> RunIdentity:
        """The same cell (method, task, settings) at another seed and entry of the study's lr grid."""
        from bench.config.study import grid_config

        return _identify(grid_config(self.config, seed, lr_index), self.path.parent)


def run_identity(cfg, results_dir: Optional[str | Path] = None) -> RunIdentity:
    """(config, hash, record path) of the run ``cfg`` describes; results_dir: where its record lives (default
    cfg.results_dir). ``cfg`` gets the study's per-method settings in place."""
    from omegaconf import OmegaConf

    from bench.config.study import apply_method_cfg, grid_config
    from bench.records.hardware import apply_precision

    if cfg.get("train") is not None and cfg.train.get("precision") == "auto":
        apply_precision(cfg)  # train.precision=auto resolved for this machine, as a run here resolves it
    apply_method_cfg(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    st = config.get("study") or {}
    grid = (st.get("lr_grid") or {}).get((config.get("method") or {}).get("name"))
    index = st.get("lr_index")
    if grid and isinstance(index, int) and not isinstance(index, bool):
        config = grid_config(config, int(config["seed"]), index)
    return _identify(config, cfg.results_dir if results_dir is None else results_dir)


def _identify(config: dict, results_dir: str | Path) -> RunIdentity:
    chash = records.config_hash(config)
    return RunIdentity(config, chash, records.record_path(results_dir, config, chash))
