"""PropulsionConfig: the peft configuration of Propulsion (arXiv 2409.10927) plus the paper's presets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from methods.peft_compat import SavesImportHint, peft_type

PEFT_TYPE_NAME = "PROPULSION"


PROPULSION = peft_type(PEFT_TYPE_NAME)  # methods/peft_compat.py

# Degrees used in the paper's experiments, keyed by a normalised task name (lower case, letters and digits only).
# GLUE: SST-2 / QQP / RTE 15, QNLI / MRPC 55, other GLUE tasks 20; SQuAD 35; LLM reasoning 15.
_GLUE_20 = ("cola", "mnli", "mnlimatched", "mnlimismatched", "mnlim", "mnlimm", "stsb", "wnli", "ax")
_REASONING = (
    # math word problems
    "gsm8k", "gsmsymbolic", "math", "svamp", "aqua", "aquarat", "mawps", "addsub", "singleeq", "multiarith",
    # commonsense reasoning (LLM-Adapters suite)
    "commonsense", "commonsense170k", "boolq", "piqa", "siqa", "socialiqa", "hellaswag", "winogrande",
    "arc", "arce", "arceasy", "arcc", "arcchallenge", "obqa", "openbookqa",
)  # fmt: skip
PAPER_DEGREES: dict[str, int] = {
    **{t: 15 for t in ("sst2", "qqp", "rte")},
    **{t: 55 for t in ("qnli", "mrpc")},
    **{t: 20 for t in _GLUE_20},
    **{t: 35 for t in ("squad", "squadv1", "squadv11", "squadv2", "squad2")},
    **{t: 15 for t in _REASONING},
}
# Tasks whose head trains in the authors' protocol (all other GLUE heads stay frozen and are only scaled).
HEAD_TRAINS_IN_PAPER = ("stsb",)


def normalize_task_name(task_name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", (task_name or "").lower())


def paper_degree(task_name: str) -> Optional[int]:
    """The paper's degree for a task, or None when the paper gives none (e.g. an unknown task)."""
    return PAPER_DEGREES.get(normalize_task_name(task_name))


def paper_train_head(task_name: str) -> bool:
    """The authors' GLUE protocol: the task head's weights stay frozen except for STS-B."""
    return normalize_task_name(task_name) in HEAD_TRAINS_IN_PAPER


@dataclass
class PropulsionConfig(SavesImportHint, PeftConfig):
    """Configuration of a :class:`PropulsionModel`.

    Every targeted frozen layer computes ``y = (W x + b) * z**k`` with a trainable vector ``z`` (one entry per
    output unit, one per embedding dimension for embedding tables) initialised to 1 and a fixed integer degree ``k``.
    """

    degree: int = field(
        default=15,
        metadata={
            "help": (
                "The fixed exponent k in y = (W x + b) * z**k. At z = 1 the gradient of z is k times that of a plain "
                "scale (IA3 is k = 1). Paper: SST-2, QQP, RTE 15; QNLI, MRPC 55; other GLUE 20; SQuAD 35; "
                "LLM reasoning 15. A positive integer."
            )
        },
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": (
                "Modules to scale. A list of names matches a module whose qualified name equals an entry or ends "
                "with '.<entry>'; a string is a regular expression that must match the whole qualified name. "
                "None (the authors' protocol) scales every nn.Linear, nn.Embedding and transformers Conv1D, "
                "including the task head, except the model's output embedding (LM head, e.g. lm_head, which is "
                "often tied to the input embedding) and tables read as raw weights (DeBERTa's rel_embeddings)."
            )
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": (
                "Modules never to scale; same matching rules as target_modules (list: name or '.<name>' suffix; "
                "string: full regular-expression match)."
            )
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": (
                "Modules (e.g. a task head such as 'classifier') whose own weights train densely and are saved with "
                "the adapter. They are not scaled (a dense trainable layer makes the scale redundant). The authors' "
                "GLUE protocol leaves the head frozen (None) except for STS-B."
            )
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": (
                "True (the paper): z starts at 1, so the adapted model starts identical to the base model. "
                "False: z starts at 1 + N(0, 0.02**2) (for tests of merging and saving only)."
            )
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PROPULSION
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(
                f"PropulsionConfig.degree must be a positive integer (the paper uses 15, 20, 35 or 55), "
                f"got {self.degree!r}."
            )
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple, set)):
                setattr(self, name, set(value))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"PropulsionConfig.{name} must be None, a list of names or a regex string, got {value!r}.")
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
