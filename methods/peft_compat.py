"""Registering an external tuner with peft, in one place, for every Python the project supports (3.10-3.13).

peft's ``register_peft_method`` only accepts names that are members of its closed ``PeftType`` enum. The
member is added the way ``enum`` stores its own members (Python 3.13 has ``Enum._add_member_`` for it;
before, the member map, the value map, the name list and the class attribute are filled by hand), so
``PeftType("PROPULSION")``, iteration, JSON round trips and peft's type -> class mappings all work.
Both steps are idempotent: re-importing a method (``importlib.reload``) registers nothing twice.

``import methods`` registers Propulsion and LoRA-Dash, after which plain peft code
(``PeftModel.from_pretrained``, ``merge_and_unload`` ...) loads their saved adapters.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType


def peft_type(name: str) -> PeftType:
    """The ``PeftType`` member called ``name`` (upper case), added to peft's enum when missing."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    add_member = getattr(PeftType, "_add_member_", None)  # Python >= 3.13
    if add_member is not None:
        add_member(name, member)
    else:
        member._sort_order_ = len(PeftType._member_names_)
        type.__setattr__(PeftType, name, member)
        PeftType._member_names_.append(name)
        PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    assert isinstance(member, enum.Enum) and PeftType(name) is member
    return member


def register_tuner(name: str, config_cls, model_cls, prefix: str | None = None) -> PeftType:
    """Add ``name`` (lower case, e.g. "propulsion") to peft: enum member + config / tuner / prefix mappings."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import register_peft_method

    member = peft_type(name.upper())
    if member not in PEFT_TYPE_TO_TUNER_MAPPING:
        kwargs = {"prefix": prefix} if prefix else {}
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, **kwargs)
    return member
