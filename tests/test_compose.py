"""bench.config.compose: one composition per (overrides, hydra, cwd) in a process, handed out as copies."""

from __future__ import annotations

import pytest

from bench.config.compose import compose
from bench.errors import BenchError


def test_a_caller_changing_its_config_changes_no_later_composition():
    first = compose(["method=lora", "task=rte", "model=tiny-bert"])
    lr, r = first.train.lr, first.method.r
    first.train.lr = 123.0
    first.method.r = 999
    again = compose(["method=lora", "task=rte", "model=tiny-bert"])
    assert again is not first
    assert (again.train.lr, again.method.r) == (lr, r)


def test_the_same_overrides_give_equal_configs_and_other_overrides_differ():
    from omegaconf import OmegaConf

    a = OmegaConf.to_container(compose(["method=ia3", "task=sst2"]))
    assert OmegaConf.to_container(compose(["method=ia3", "task=sst2"])) == a
    assert OmegaConf.to_container(compose(["method=ia3", "task=cola"]))["task"] != a["task"]


def test_a_searchpath_folder_is_read_again_at_every_composition(tmp_path):
    """Folders named by hydra.searchpath live outside conf/ and may change: never served from the cache."""
    folder = tmp_path / "mine" / "method"
    folder.mkdir(parents=True)
    yaml = folder / "hra_mine.yaml"
    overrides = ["method=hra_mine", f"hydra.searchpath=[file://{tmp_path / 'mine'}]"]
    yaml.write_text("name: hra_mine\npeft_type: HRA\nr: 4\ntarget_roles: [q, v]\ntrain_head: auto\n")
    assert compose(overrides).method.r == 4
    yaml.write_text("name: hra_mine\npeft_type: HRA\nr: 8\ntarget_roles: [q, v]\ntrain_head: auto\n")
    assert compose(overrides).method.r == 8


def test_an_override_that_does_not_compose_fails_every_time():
    for _ in range(2):
        with pytest.raises(BenchError, match="cannot compose"):
            compose(["train.nosuchkey.deeper=1"])
