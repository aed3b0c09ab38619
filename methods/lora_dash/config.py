"""LoraDashConfig: peft's LoraConfig plus the two LoRA-Dash knobs, under its own peft type.

The adapter_config.json written by ``save_pretrained`` says ``"peft_type": "LORA_DASH (...)"`` (what to
import to load it, methods/peft_compat.py), so
``PeftModel.from_pretrained`` rebuilds LoRA-Dash layers (with their U_s / V_s / d / switch state)
instead of silently loading a plain LoRA and dropping the dash term. That needs a ``PeftType``
member, which peft only ships for its built-in methods; ``methods.peft_compat.peft_type`` adds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig

from methods.peft_compat import SavesImportHint, peft_type

PEFT_TYPE_NAME = "LORA_DASH"


LORA_DASH = peft_type(PEFT_TYPE_NAME)  # added to peft's enum by methods/peft_compat.py


@dataclass
class LoraDashConfig(SavesImportHint, LoraConfig):
    """LoRA-Dash (Si et al., arXiv 2409.01035): LoRA for ``dash_t`` optimizer steps, then per adapted
    matrix the ``dash_s`` singular directions of the frozen W that the LoRA update changed most
    (|u_i^T dW v_i| / s_i) get one trainable scale each: y = W x + (alpha/r) B A x + U_s diag(d) V_s^T x.

    Only ``torch.nn.Linear`` (and transformers ``Conv1D``) targets are supported. DoRA, LoRA bias,
    ``target_parameters`` and initialisations that rewrite W (PiSSA, OLoRA, LoftQ, ...) are rejected.
    The LoRA term always uses peft's per-module ``scaling`` (alpha / r, or what rank / alpha patterns
    and rsLoRA make of it).
    """

    dash_s: int = field(default=8, metadata={"help": "Task-specific directions kept per adapted matrix (the paper's s)."})
    dash_t: int = field(
        default=100,
        metadata={
            "help": "Optimizer steps of plain LoRA before the directions are chosen (the paper's t). Counted as "
            "Trainer optimizer steps, so evaluation passes, gradient accumulation and checkpointing do not move it."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = LORA_DASH
        if isinstance(self.dash_s, bool) or not isinstance(self.dash_s, int) or self.dash_s <= 0:
            raise ValueError(f"dash_s must be a positive integer, got {self.dash_s!r}")
        if isinstance(self.dash_t, bool) or not isinstance(self.dash_t, int) or self.dash_t < 0:
            raise ValueError(f"dash_t must be an integer >= 0, got {self.dash_t!r}")
        unsupported = {
            "use_dora": self.use_dora,
            "lora_bias": self.lora_bias,
            "init_lora_weights": self.init_lora_weights not in (True, False, "gaussian"),
            "target_parameters": bool(self.target_parameters),
        }
        bad = sorted(k for k, v in unsupported.items() if v)
        if bad:
            raise ValueError(f"LoRA-Dash does not combine with these LoRA options: {bad}; leave them at their defaults")
