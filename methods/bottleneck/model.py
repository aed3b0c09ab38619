"""BottleneckModel: the peft tuner that places series / parallel bottleneck adapters and wires parallel inputs."""

from __future__ import annotations

import re

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import BottleneckConfig
from .layer import CANNOT_MERGE, BottleneckLayer, Linear
from methods.targets import matches_peft_pattern, under_modules_to_save




def sublayer_input_name(config: BottleneckConfig, key: str) -> str:
    """The qualified name of the module whose first input is the sub-layer input of the projection ``key``."""
    for pattern, replacement in (config.sublayer_inputs or {}).items():
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise ValueError(
        f"parallel bottleneck adapter on {key!r}: no sublayer_inputs rule matches it (rules: "
        f"{list(config.sublayer_inputs or {})}); parallel adapters go on the attention / FFN output projections "
        "(roles o, down)"
    )


def _first_input(args, kwargs):
    if args:
        return args[0]
    for name in ("hidden_states", "x", "input", "hidden_state"):
        if name in kwargs:
            return kwargs[name]
    raise RuntimeError(f"parallel bottleneck adapter: cannot find the sub-layer's input among {sorted(kwargs)}")


class BottleneckModel(BaseTuner):
    """Series (Houlsby et al. 2019) and parallel (He et al. 2022) bottleneck adapters as a peft tuner.

    Use through ``peft.get_peft_model(model, BottleneckConfig(...))`` after ``import methods``. A parallel adapter
    reads the sub-layer's input through a forward pre-hook on the module named by ``config.sublayer_inputs``; the
    hooks are registered when the layer is created (so ``PeftModel.from_pretrained`` wires them too) and removed on
    ``unload``. Adapters add a nonlinearity: merging raises ("cannot merge").
    """

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}  # the harness resolves targets per architecture (methods/bottleneck/placement.py)

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        return peft_config

    def _check_target_module_exists(self, peft_config: BottleneckConfig, key: str):
        if under_modules_to_save(peft_config, key):
            return False
        return matches_peft_pattern(peft_config.target_modules, key)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        kw = dict(mode=config.mode, r=config.r, non_linearity=config.non_linearity, scaling=config.scaling,
                  init_weights=config.init_weights)
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, inference_mode=config.inference_mode, **kw)
            layer = target
        else:
            base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
            if not isinstance(base, nn.Linear):
                raise ValueError(
                    f"target module {current_key!r} is a {type(base).__name__}; bottleneck adapters wrap nn.Linear "
                    "output projections (roles o, down)"
                )
            layer = Linear(target, adapter_name, **kw)
            if adapter_name not in self.active_adapters:
                layer.requires_grad_(False)
            self._replace_module(parent, target_name, layer, target)
        if config.mode == "parallel":
            self._wire_parallel_input(config, layer, current_key)

    def _wire_parallel_input(self, config: BottleneckConfig, layer: BottleneckLayer, key: str) -> None:
        source_name = sublayer_input_name(config, key)
        try:
            source = self.model.get_submodule(source_name)
        except AttributeError:
            raise ValueError(
                f"parallel bottleneck adapter on {key!r}: its sub-layer input module {source_name!r} does not exist"
            ) from None
        handles = self.__dict__.setdefault("_bottleneck_hooks", {})
        if id(layer) in handles:
            return

        def hook(module, args, kwargs, _layer=layer):
            _layer.set_sublayer_input(_first_input(args, kwargs))

        handles[id(layer)] = source.register_forward_pre_hook(hook, with_kwargs=True)

    def _check_merge_allowed(self) -> None:
        raise ValueError(CANNOT_MERGE)

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs):
        if merge:
            raise ValueError(CANNOT_MERGE)
        for handle in self.__dict__.pop("_bottleneck_hooks", {}).values():
            handle.remove()
        return super()._unload_and_optionally_merge(merge=False, **kwargs)

    def bottleneck_layers(self) -> dict[str, BottleneckLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, BottleneckLayer)}
