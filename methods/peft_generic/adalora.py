"""AdaLoRA in a Trainer run: the schedule from the run's true optimizer step count, the allocator stepped once per
optimizer step (peft's ``update_and_allocate`` must run after ``optimizer.step()`` and before ``zero_grad()``: it
scores the ranks from the gradients). The orthogonal regulariser is peft's own: ``AdaLoraModel.forward`` adds
``orth_reg_weight * mean ||P P^T - I||_F`` to the model's loss, which is the loss the Trainer backpropagates."""

from __future__ import annotations

import logging
from typing import Any, Optional

from transformers import TrainerCallback

from methods.base import MethodConfigError

log = logging.getLogger(__name__)


def _steps(value: Any, total: int, key: str) -> int:
    """tinit / tfinal: an integer step count, or a fraction in (0, 1) of the run's optimizer steps."""
    if isinstance(value, bool):
        raise MethodConfigError(f"method.{key} must be a step count or a fraction in (0, 1) (got {value!r})")
    if isinstance(value, float) and 0.0 < value < 1.0:
        return int(round(value * total))
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MethodConfigError(f"method.{key} must be a step count or a fraction in (0, 1) (got {value!r})") from None


def resolve_schedule(kw: dict, total_steps: Optional[int]) -> dict:
    """total_step (null = the run's optimizer steps), tinit and tfinal as step counts."""
    total = kw.get("total_step") or total_steps
    if not total:
        raise MethodConfigError("AdaLoRA needs the run's optimizer step count: set method.total_step=<steps> "
                                "(the run did not say how many optimizer steps it takes)")
    total = int(total)
    out = {"total_step": total, "tinit": _steps(kw.get("tinit", 0), total, "tinit"),
           "tfinal": _steps(kw.get("tfinal", 0), total, "tfinal")}
    if out["tinit"] >= total - out["tfinal"]:
        raise MethodConfigError(
            f"AdaLoRA's budgeting phase is empty: tinit={out['tinit']} >= total_step - tfinal = {total} - "
            f"{out['tfinal']}; lower method.tinit / method.tfinal (fractions such as 0.1 scale with the run)")
    return out


class AdaLoraAllocatorCallback(TrainerCallback):
    """Steps AdaLoRA's rank allocator after every optimizer step, with the run's true total step count.

    ``on_train_begin``: the adapter's ``total_step`` (and ``tinit`` / ``tfinal`` given as fractions, which the
    config then holds as steps) is set to ``state.max_steps``, the optimizer steps the Trainer will really take.
    ``on_optimizer_step`` fires once per optimizer step (not per accumulation micro-batch), after the update and
    before the gradients are zeroed; ``state.global_step`` is then the 0-based index of that step."""

    def __init__(self, adapter: Optional[str] = None):
        self.adapter = adapter
        self.steps_seen: list[int] = []

    def _tuner(self, model):
        tuner = getattr(model, "base_model", None)
        if tuner is None or not hasattr(tuner, "update_and_allocate"):
            raise RuntimeError("AdaLoraAllocatorCallback needs a peft AdaLoRA model")
        return tuner

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        tuner = self._tuner(model)
        conf = tuner.peft_config[self.adapter or tuner.trainable_adapter_name]
        true_total = int(state.max_steps)
        if conf.total_step != true_total:
            scale = true_total / conf.total_step
            log.warning("AdaLoRA: total_step %d -> %d (the run's optimizer steps)", conf.total_step, true_total)
            conf.tinit, conf.tfinal = int(round(conf.tinit * scale)), int(round(conf.tfinal * scale))
            conf.total_step = true_total
            resolve_schedule({"total_step": true_total, "tinit": conf.tinit, "tfinal": conf.tfinal}, true_total)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        self.steps_seen.append(int(state.global_step))
        self._tuner(model).update_and_allocate(int(state.global_step))
