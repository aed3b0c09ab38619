"""Registering an external tuner with peft, in one place, for every Python the project supports (3.10-3.13).

peft's ``register_peft_method`` only accepts names that are members of its closed ``PeftType`` enum. The
member is added the way ``enum`` stores its own members (Python 3.13's ``Enum._add_member_`` sets the class
attribute and the member map; before 3.13 they are set by hand; the name list and the value map by hand on all), so
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

IMPORT_HINT = "peft-bench tuner: `import methods` registers it with peft"


def saved_name(name: str) -> str:
    """The ``peft_type`` string a saved adapter_config.json holds for the registered type ``name``: the name and
    what to import (plain peft's KeyError prints it as it is)."""
    return f"{name} ({IMPORT_HINT})"


def add_enum_member(cls: type[enum.Enum], name: str) -> enum.Enum:
    """The member ``name`` (value ``name``) of the str-valued enum ``cls``, added when missing, the way ``enum``
    stores its own members: ``cls(name)``, ``cls[name]``, iteration and ``len`` see it. Imports nothing but
    ``enum``, so tests/test_peft_compat.py runs it under every Python 3.10 - 3.13 found on the machine."""
    if name in cls.__members__:
        return cls[name]
    member = str.__new__(cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = cls
    member._sort_order_ = len(cls._member_names_)
    add_member = getattr(cls, "_add_member_", None)  # Python >= 3.13: the attribute and the member map
    if add_member is not None:
        add_member(name, member)
    else:
        type.__setattr__(cls, name, member)
        cls._member_map_[name] = member
    cls._member_names_.append(name)  # iteration and len (3.13's _add_member_ leaves them to the caller)
    cls._value2member_map_[name] = member
    if not (isinstance(member, enum.Enum) and cls(name) is member):
        raise RuntimeError(f"could not add {name!r} to {cls.__name__} on this Python; "
                           "report it with the output of `python --version`")
    return member


def peft_type(name: str):
    """The ``PeftType`` member called ``name`` (upper case), added to peft's enum when missing."""
    from peft.utils.peft_types import PeftType

    return add_enum_member(PeftType, name)


def register_tuner(name: str, config_cls, model_cls, prefix: str | None = None):
    """Add ``name`` (lower case, e.g. "propulsion") to peft: enum member + config / tuner / prefix mappings, and
    the saved spelling (:func:`saved_name`) as a second key of the config mapping and a value alias of the enum."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType, register_peft_method

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
        from peft.utils.peft_types import PeftType

        out = super().to_dict()
        if out.get("peft_type") is not None:
            out["peft_type"] = saved_name(PeftType(out["peft_type"]).value)
        return out
