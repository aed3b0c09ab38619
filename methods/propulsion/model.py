"""PropulsionModel: the peft tuner that wraps target layers with Propulsion layers."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .config import PropulsionConfig
from .layer import SUPPORTED_BASE_LAYERS, Embedding, Linear, PropulsionLayer
from methods.targets import matches_peft_pattern, under_modules_to_save

try:  # peft's marker for "excluded on purpose" (better errors when every module is excluded)
    from peft.tuners.tuners_utils import _ExcludedModule
except ImportError:  # pragma: no cover - older peft

    class _ExcludedModule:
        def __bool__(self):
            return False


# Embedding tables that models read as raw ``.weight`` instead of calling them (a wrapper's scale would never act).
# Default targeting skips them; naming them in target_modules still wraps them.
WEIGHT_READ_MODULES = ("rel_embeddings",)  # DeBERTa(-v2) relative position table




class PropulsionModel(BaseTuner):
    """Propulsion (Kowsher et al., arXiv 2409.10927) as a peft tuner.

    Each targeted frozen layer computes ``(W x + b) * z**k``; only the vectors z (and ``modules_to_save``) train.
    Use through ``peft.get_peft_model(model, PropulsionConfig(...))`` after ``import methods.propulsion``.

    Tied weights (e.g. ``lm_head`` sharing ``embed_tokens.weight`` in small Llamas): the forward scales each wrapped
    module separately, which is always correct. Merging cannot fold a scale into a tensor that another module also
    reads, so merging first gives the merged layer its own copy of the shared tensor (the model is untied; the config's
    ``tie_word_embeddings`` is set to False) and warns. By default the output embedding (LM head) is not scaled.
    """

    prefix: str = "propulsion_"
    tuner_layer_cls = PropulsionLayer
    target_module_mapping: dict = {}  # no per-architecture table: target_modules=None means "all supported layers"

    # -- targeting -------------------------------------------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config: PropulsionConfig, model_config: dict) -> PropulsionConfig:
        return peft_config  # None stays None: resolved per module in _check_target_module_exists

    def _prepare_model(self, peft_config: PropulsionConfig, model: nn.Module) -> None:
        self._default_targets = set()
        if peft_config.target_modules is not None:
            return
        output_embedding = None
        if hasattr(model, "get_output_embeddings"):
            try:
                output_embedding = model.get_output_embeddings()
            except (NotImplementedError, AttributeError):
                output_embedding = None
        for name, module in model.named_modules():
            if output_embedding is not None and module is output_embedding:
                continue
            if name.rpartition(".")[2] in WEIGHT_READ_MODULES:
                continue
            if isinstance(module, PropulsionLayer) or (
                isinstance(module, SUPPORTED_BASE_LAYERS) and not isinstance(module, BaseTunerLayer)
            ):
                self._default_targets.add(name)

    def _check_target_module_exists(self, peft_config: PropulsionConfig, key: str):
        if matches_peft_pattern(peft_config.exclude_modules, key) or under_modules_to_save(peft_config, key):
            return _ExcludedModule()
        if peft_config.target_modules is None:
            return key in getattr(self, "_default_targets", ())
        return matches_peft_pattern(peft_config.target_modules, key)

    # -- creating layers -------------------------------------------------------------------------------------------
    @staticmethod
    def _create_new_module(config: PropulsionConfig, adapter_name: str, target: nn.Module, key: str) -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        kwargs = dict(degree=config.degree, init_weights=config.init_weights)
        if isinstance(base, nn.Embedding):
            return Embedding(target, adapter_name, **kwargs)
        if isinstance(base, SUPPORTED_BASE_LAYERS):
            return Linear(target, adapter_name, **kwargs)
        raise ValueError(
            f"Target module {key!r} is a {type(base).__name__}; Propulsion scales only nn.Linear, nn.Embedding and "
            "transformers Conv1D layers. Narrow target_modules (names match a '.<name>' suffix, a string must match "
            "the whole name as a regex) or leave it unset to scale every supported layer."
        )

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        if isinstance(target, PropulsionLayer):
            target.update_layer(
                adapter_name, config.degree, init_weights=config.init_weights, inference_mode=config.inference_mode
            )
            return
        new_module = self._create_new_module(config, adapter_name, target, current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)

    # -- merging ---------------------------------------------------------------------------------------------------
    def _check_merge_allowed(self) -> None:
        """Called by peft before every merge: untie weights that a wrapped layer shares with other modules."""
        self.untie_shared_weights()

    def untie_shared_weights(self) -> list[str]:
        """Give each Propulsion-wrapped base layer its own copy of any weight/bias another module also holds.

        Returns the qualified names of the parameters that got a copy. Needed before merging: folding z**k into a
        tensor shared with another module (tied input/output embeddings) would change that module too.
        """
        holders: dict[int, int] = defaultdict(int)
        for module in self.model.modules():
            for param in module._parameters.values():
                if param is not None:
                    holders[id(param)] += 1
        untied = []
        for name, module in self.model.named_modules():
            if not isinstance(module, PropulsionLayer):
                continue
            base = module.get_base_layer()
            for pname in ("weight", "bias"):
                param = base._parameters.get(pname)
                if param is None or holders[id(param)] < 2:
                    continue
                holders[id(param)] -= 1
                base._parameters[pname] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                untied.append(f"{name}.base_layer.{pname}")
        if untied:
            config = getattr(self.model, "config", None)
            if getattr(config, "tie_word_embeddings", False):
                config.tie_word_embeddings = False
            warnings.warn(
                f"Untied {untied} before merging: these tensors were shared with other modules, and folding z**k into a "
                "shared tensor would change the other module too. The merged model keeps separate copies "
                "(tie_word_embeddings set to False).",
                stacklevel=2,
            )
        return untied

    # -- helpers ---------------------------------------------------------------------------------------------------
    def propulsion_layers(self) -> dict[str, PropulsionLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, PropulsionLayer)}

    def scale_statistics(self, adapter_name: Optional[str] = None) -> dict:
        """min / max of z and of z**k over all layers (the paper reports trained z within about 0.98 to 1.02)."""
        adapter_name = adapter_name or self.active_adapters[0]
        zs, scales = [], []
        with torch.no_grad():
            for layer in self.propulsion_layers().values():
                if adapter_name in layer.propulsion_z:
                    zs.append(layer.propulsion_z[adapter_name].detach().float().flatten())
                    scales.append(layer.get_scale(adapter_name).detach().float().flatten())
        if not zs:
            return {}
        z, s = torch.cat(zs), torch.cat(scales)
        return {
            "z_min": z.min().item(),
            "z_max": z.max().item(),
            "scale_min": s.min().item(),
            "scale_max": s.max().item(),
            "num_z": int(z.numel()),
            "num_layers": len(zs),
        }
