"""PropulsionConfig: the peft configuration of Propulsion (arXiv 2409.10927) plus the paper's presets."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from peft.config import PeftConfig
from methods.peft_compat import SavesImportHint, peft_type

PEFT_TYPE_NAME = "PROPULSION"


PROPULSION = peft_type(PEFT_TYPE_NAME)  # methods/peft_compat.py

#: the paper's per-task degrees and head rule (a YAML, so that a new task needs no Python); read on use
PAPER_FILE = Path(__file__).resolve().parents[2] / "conf" / "propulsion_paper.yaml"


def normalize_task_name(task_name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", (task_name or "").lower())


@functools.lru_cache(maxsize=8)
def _read_paper_file(path: str, mtime_ns: int, size: int) -> tuple[dict[str, int], tuple[str, ...]]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    degrees = data.get("degrees") or {}
    bad = {k: v for k, v in degrees.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if not isinstance(degrees, dict) or bad:
        raise ValueError(f"{path}: degrees must map task names to positive integers (got {bad or degrees!r})")
    heads = data.get("head_trains") or []
    return ({normalize_task_name(str(k)): v for k, v in degrees.items()},
            tuple(normalize_task_name(str(t)) for t in heads))


def _paper(path: Optional[Union[str, Path]] = None) -> tuple[dict[str, int], tuple[str, ...]]:
    path = Path(path or PAPER_FILE)
    stat = path.stat()  # the cache key: an edited file is read again
    return _read_paper_file(str(path), stat.st_mtime_ns, stat.st_size)


def paper_degrees(path: Optional[Union[str, Path]] = None) -> dict[str, int]:
    """Normalised task name -> the paper's degree, from ``path`` (default PAPER_FILE, conf/propulsion_paper.yaml)."""
    return dict(_paper(path)[0])


def paper_degree(task_name: str, path: Optional[Union[str, Path]] = None) -> Optional[int]:
    """The paper's degree for a task, or None when the paper gives none (e.g. an unknown task)."""
    return _paper(path)[0].get(normalize_task_name(task_name))


def paper_train_head(task_name: str, path: Optional[Union[str, Path]] = None) -> bool:
    """The authors' GLUE protocol: the task head's weights stay frozen except for the tasks in ``head_trains``
    (STS-B)."""
    return normalize_task_name(task_name) in _paper(path)[1]


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
