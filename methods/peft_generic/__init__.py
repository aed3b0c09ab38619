"""Any peft tuner by name: ``method=peft method.peft_type=<TYPE>`` plus that peft config's keys.

A preset is one YAML in ``conf/method/`` (or in a folder of the user's own on ``hydra.searchpath``)::

    name: dora             # the method's name in records, tables and lr grids
    peft_type: LORA        # a peft PeftType
    target_roles: [q, v]   # this suite's roles (methods/targets.py), mapped per architecture to target_modules
    train_head: auto       # the task head trains densely (peft modules_to_save) and is counted apart
    lr_grid: [...]         # the learning rates a study should try (documentation of the preset; not passed to peft)
    r: 8                   # ... every other key is a field of the peft config class
    use_dora: true

Suite keys: ``name``, ``peft_type``, ``train_head``, ``lr_grid`` and ``<field>_roles`` for any ``<field>_modules`` of the
config (``target_roles`` -> ``target_modules``, ``feedforward_roles`` -> ``feedforward_modules``, ...). Values this
suite adds on top of peft's: ``init_lora_weights: milora`` (methods/peft_generic/milora.py), and AdaLoRA's ``tinit`` /
``tfinal`` as a fraction in (0, 1) of the run's optimizer steps; AdaLoRA's ``total_step: null`` is the run's
true optimizer step count and its rank allocator is stepped by :class:`AdaLoraAllocatorCallback`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from torch import nn

from methods.base import Method, MethodConfigError, MethodContext, head_to_save
from methods.options import check_train_head
from methods.peft_generic.adalora import AdaLoraAllocatorCallback, resolve_schedule
from methods.peft_generic.milora import INIT_ATTR, is_mutating, milora_init, save_converted, snapshot_initial
from methods.registry import register
from registry import did_you_mean
from methods.targets import ROLES, resolve_targets

__all__ = ["AdaLoraAllocatorCallback", "PeftMethod", "config_class", "milora_init"]

SUITE_KEYS = ("name", "peft_type", "train_head", "lr_grid")
#: fields the suite sets itself (never from the YAML)
_SET_HERE = ("peft_type", "task_type", "modules_to_save")
_TASK_TYPES = {"seq_cls": "SEQ_CLS", "qa": "QUESTION_ANS", "causal_lm": "CAUSAL_LM"}


def peft_types() -> list[str]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return sorted({getattr(k, "value", str(k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING if " " not in str(getattr(k, "value", k))})


def config_class(peft_type: Any):
    """The peft config class of ``peft_type`` (any case); MethodConfigError naming the valid types otherwise."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils.peft_types import PeftType

    name = str(peft_type or "").strip().upper()
    if name in PeftType.__members__ and PeftType[name] in PEFT_TYPE_TO_CONFIG_MAPPING:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name]]
    valid = peft_types()
    raise MethodConfigError(
        f"unknown method.peft_type {peft_type!r}{did_you_mean(name, valid)}; valid peft types: {', '.join(valid)}"
    )


def config_fields(cls) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _SET_HERE)


def _saves_modules(cls) -> bool:
    """Can the config train modules densely beside the adapter (peft's modules_to_save: where the head goes)?"""
    return "modules_to_save" in {f.name for f in dataclasses.fields(cls)}


def _is_prompt_learning(cls) -> bool:
    from peft import PromptLearningConfig

    return issubclass(cls, PromptLearningConfig)


def _matches(name: str, targets) -> bool:
    """peft's rule: a string is a full-match regex, a list matches a module name or its dotted suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


@register
class PeftMethod(Method):
    """A peft tuner built from its config keys; the presets in conf/method/ are instances under their own name."""

    name = "peft"

    # ------------------------------------------------------------------ config
    def validate(self, cfg: Mapping[str, Any]) -> None:
        self._split(cfg)

    def _split(self, cfg: Mapping[str, Any]) -> tuple[type, dict, dict]:
        """(config class, peft keys, roles keys); one MethodConfigError line for a bad type or key."""
        cls = config_class(cfg.get("peft_type"))
        fields = config_fields(cls)
        peft_kw: dict = {}
        roles: dict = {}
        unknown = []
        for key, value in cfg.items():
            if key in SUITE_KEYS or (key.endswith("_roles") and value is None):
                continue
            if key.endswith("_roles") and key[: -len("_roles")] + "_modules" in fields:
                roles[key[: -len("_roles")] + "_modules"] = value
            elif key in fields:
                peft_kw[key] = value
            else:
                unknown.append(key)
        if unknown:
            valid = fields + [f[: -len("_modules")] + "_roles" for f in fields if f.endswith("_modules")]
            hints = ", ".join(f"{k!r}{did_you_mean(k, valid)}" for k in unknown)
            raise MethodConfigError(
                f"{cls.__name__} ({str(cfg.get('peft_type')).upper()}) has no option {hints}; valid options: "
                f"{', '.join(sorted(valid))} (and the suite's {', '.join(SUITE_KEYS)})"
            )
        if _saves_modules(cls) and not _is_prompt_learning(cls):
            if "train_head" not in cfg:  # its default lives in the YAML (conf/method/peft.yaml), never here
                raise MethodConfigError(
                    f"{cfg.get('name', self.name)}: method.train_head is not set; add `train_head: auto` (the task "
                    "decides), true or false to the method's YAML, or pass +method.train_head=auto")
            check_train_head(cfg["train_head"])
        return cls, peft_kw, roles

    def peft_config(self, cfg: Mapping[str, Any], ctx: MethodContext, model: nn.Module | None = None):
        cls, kw, roles = self._split(cfg)
        kw = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items()}
        for field, value in roles.items():
            if value is None or kw.get(field) is not None:
                continue  # explicit <field>_modules win over roles
            try:
                kw[field] = resolve_targets(ctx.model_type, None, list(value))
            except KeyError as e:
                raise MethodConfigError(f"method.{field[:-len('_modules')]}_roles: {e.args[0]}") from None
        if _is_prompt_learning(cls):
            if ctx.task_type not in _TASK_TYPES:
                raise MethodConfigError(f"{self.name}: peft prompt learning has no task type for {ctx.task_type!r}")
            kw["task_type"] = _TASK_TYPES[ctx.task_type]
        elif _saves_modules(cls):
            kw["modules_to_save"] = head_to_save(cfg["train_head"], ctx)
        if cls.__name__ == "AdaLoraConfig":
            kw.update(resolve_schedule(kw, ctx.total_steps))
            # a task-typed PeftModel calls the tuner's forward, where peft adds the orthogonal regulariser to the
            # loss; the plain PeftModel (no task type) calls the base model directly and would skip it
            kw["task_type"] = _TASK_TYPES.get(ctx.task_type)
        init = kw.get("init_lora_weights")
        if is_mutating(init):
            if init.lower() == "milora" or (model is not None and _on_meta(model)):
                kw["init_lora_weights"] = True  # MiLoRA's init runs after peft's; on meta only shapes count
        try:
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise MethodConfigError(f"{self.name} ({cls.__name__}): {_one_line(e)}") from None

    # ------------------------------------------------------------------ hooks
    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model

        config = self.peft_config(cfg, ctx, model)
        for field in ("target_modules", "feedforward_modules"):
            targets = getattr(config, field, None)
            if targets and not isinstance(targets, (set, list, tuple, str)):
                continue
            if targets and field == "target_modules" and targets != "all-linear":
                names = [n for n, _ in model.named_modules()]
                if not any(_matches(n, targets) for n in names):
                    roles = sorted(ROLES.get(ctx.model_type, {}))
                    raise MethodConfigError(
                        f"{self.name}: target_modules {_show(targets)} match no module of this {ctx.model_type} model; "
                        f"choose method.target_roles from {roles} or name modules it has (e.g. "
                        f"{_leaf_examples(model)})"
                    )
        _check_family(self.name, config, model, ctx)
        try:
            peft_model = get_peft_model(model, config)
        except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError, RuntimeError) as e:
            raise MethodConfigError(
                f"{self.name} ({config.peft_type.value if hasattr(config.peft_type, 'value') else config.peft_type}) "
                f"cannot be applied to this {ctx.model_type} model ({ctx.task_type}): {_one_line(e)}"
            ) from None
        init = cfg.get("init_lora_weights")
        if is_mutating(init) and not _on_meta(peft_model):
            if str(init).lower() == "milora":
                milora_init(peft_model)
            snapshot_initial(peft_model)
        return peft_model

    def callbacks(self, model, cfg, ctx):
        if str(cfg.get("peft_type", "")).upper() == "ADALORA":
            return [AdaLoraAllocatorCallback()]
        return []

    def record_state(self, model, cfg) -> dict:
        out: dict = {"peft_type": str(cfg.get("peft_type", "")).upper()}
        conf = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
        if conf is not None and out["peft_type"] == "ADALORA":
            out.update(total_step=conf.total_step, tinit=conf.tinit, tfinal=conf.tfinal,
                       final_ranks=sum(int(sum(v)) if isinstance(v, list) else int(v.sum())
                                       for v in (conf.rank_pattern or {}).values()) or None)
        return out

    def merge(self, model, cfg):
        if _is_prompt_learning(config_class(cfg.get("peft_type"))):
            raise MethodConfigError(
                f"{self.name} cannot merge: {str(cfg.get('peft_type')).upper()} adds virtual tokens to every input, "
                "not a weight delta; keep the PeftModel (or save the adapter) instead")
        return super().merge(model, cfg)

    def save(self, model, cfg, path: str) -> None:
        """peft's save_pretrained; an init that changed the base weights (PiSSA, MiLoRA) is saved converted to a
        plain LoRA of rank 2r over the unchanged base model (peft's path_initial_model_for_weight_conversion)."""
        if model.__dict__.get(INIT_ATTR) is not None:
            save_converted(model, path)
        else:
            model.save_pretrained(path)


def _check_family(name: str, config, model: nn.Module, ctx: MethodContext) -> None:
    """Refuse, in one line, a peft type the model family cannot take (peft itself fails only at the first forward)."""
    import inspect

    # peft checks the signature for the task models other than a causal LM (which gets past_key_values as kwargs)
    if getattr(config.peft_type, "value", config.peft_type) == "PREFIX_TUNING" and ctx.task_type != "causal_lm":
        backbone = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
        if not any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone)):
            raise MethodConfigError(
                f"{name}: peft's prefix tuning needs a model whose forward takes past_key_values, and this "
                f"{ctx.model_type} model's does not (transformers 5 encoders dropped them); use it on a decoder such "
                f"as llama, or method=prompt_tuning"
            )


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _show(targets) -> str:
    return targets if isinstance(targets, str) else "[" + ", ".join(sorted(targets)) + "]"


def _leaf_examples(model: nn.Module) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    return ", ".join(leaves[:8])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:400]
