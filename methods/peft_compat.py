"""Registering an external tuner with peft, in one place, for every Python the project supports (3.10-3.13).

peft's ``register_peft_method`` only accepts names that are members of its closed ``PeftType`` enum. The
member is added the way ``enum`` stores its own members (Python 3.13 has ``Enum._add_member_`` for it;
before, the member map, the value map, the name list and the class attribute are filled by hand), so
``PeftType("PROPULSION")``, iteration, JSON round trips and peft's type -> class mappings all work.
Every step is idempotent: re-importing a method (``importlib.reload``) registers nothing twice.

``import methods`` registers Propulsion and LoRA-Dash, after which plain peft code
(``PeftModel.from_pretrained``, ``merge_and_unload`` ...) loads their saved adapters.

Saved adapters say what to import. Plain peft reads ``peft_type`` from adapter_config.json and looks that
string up in ``PEFT_TYPE_TO_CONFIG_MAPPING`` before anything else, so an unregistered type fails with
``KeyError: '<the stored string>'`` - no hook of ours can run there. The configs of the tuners registered here
(:class:`SavesImportHint`) therefore store ``peft_type`` as :func:`saved_name`, e.g.
``"PROPULSION (peft-bench tuner: `import methods` registers it with peft)"``, and :func:`register_tuner`
maps that string to the same config class and enum member. In memory the type stays the plain member
(``PeftType.PROPULSION``, value ``"PROPULSION"``), so peft's and transformers' own checks see the usual value;
adapters saved before (``"peft_type": "PROPULSION"``) load as they did.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType

IMPORT_HINT = "peft-bench tuner: `import methods` registers it with peft"


def saved_name(name: str) -> str:
    """The ``peft_type`` string a saved adapter_config.json holds for the registered type ``name``: the name and
    what to import (plain peft's KeyError prints it as it is)."""
    return f"{name} ({IMPORT_HINT})"


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
    """Add ``name`` (lower case, e.g. "propulsion") to peft: enum member + config / tuner / prefix mappings, and
    the saved spelling (:func:`saved_name`) as a second key of the config mapping and a value alias of the enum."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import register_peft_method

    member = peft_type(name.upper())
    if member not in PEFT_TYPE_TO_TUNER_MAPPING:
        kwargs = {"prefix": prefix} if prefix else {}
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, **kwargs)
    saved = saved_name(member.value)
    PEFT_TYPE_TO_CONFIG_MAPPING[saved] = config_cls  # PeftModel.from_pretrained / PeftConfig.from_pretrained
    PeftType._value2member_map_[saved] = member  # PeftType(saved) is member
    return member


class SavesImportHint:
    """First base of the ``PeftConfig`` of a tuner registered here: ``to_dict`` (what ``save_pretrained`` writes)
    stores ``peft_type`` as :func:`saved_name`, so plain peft without ``import methods`` fails with a KeyError that
    names the import."""

    def to_dict(self) -> dict:
        out = super().to_dict()
        if out.get("peft_type") is not None:
            out["peft_type"] = saved_name(PeftType(out["peft_type"]).value)
        return out
