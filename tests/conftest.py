"""Shared fixtures: tiny models built in code (no download), seeded."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("BENCH_DATA_DIR", ROOT.parent / "shared" / "data"))


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, num_labels=2)
    base.update(kw)
    return BertConfig(**base)


def tiny_roberta_config(**kw):
    from transformers import RobertaConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=70, num_labels=2, pad_token_id=1)
    base.update(kw)
    return RobertaConfig(**base)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                tie_word_embeddings=True)
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def tiny_bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def tiny_roberta():
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(tiny_roberta_config()).eval()


@pytest.fixture
def tiny_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set BENCH_DATA_DIR)")
    return SHARED_DATA


# --- generated GLUE data in the hub schema (for loaders of tasks absent from ../shared/data) --------
GLUE_SCHEMAS = {
    "cola": (["sentence"], "int", ["train", "validation"]),
    "sst2": (["sentence"], "int", ["train", "validation"]),
    "mrpc": (["sentence1", "sentence2"], "int", ["train", "validation"]),
    "qqp": (["question1", "question2"], "int", ["train", "validation"]),
    "stsb": (["sentence1", "sentence2"], "float", ["train", "validation"]),
    "mnli": (["premise", "hypothesis"], "int3", ["train", "validation_matched", "validation_mismatched"]),
    "qnli": (["question", "sentence"], "int", ["train", "validation"]),
    "rte": (["sentence1", "sentence2"], "int", ["train", "validation"]),
}
WORDS = "the cat sat on a mat while dogs ran fast over green hills and nobody saw it happen again".split()


def write_glue_fixture(root, n_train=24, n_eval=12, seed=0):
    """Small parquet files with the hub's column names and dtypes for all eight GLUE tasks."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    for task, (fields, kind, splits) in GLUE_SCHEMAS.items():
        for split in splits:
            n = n_train if split == "train" else n_eval
            cols = {f: [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(n)] for f in fields}
            if kind == "float":
                cols["label"] = rng.uniform(0, 5, size=n).astype("float32")
            else:
                cols["label"] = rng.integers(0, 3 if kind == "int3" else 2, size=n).astype("int64")
            cols["idx"] = np.arange(n, dtype="int32")
            d = Path(root) / "glue" / task
            d.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(cols).to_parquet(d / f"{split}.parquet", index=False)
    return Path(root)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    return write_glue_fixture(tmp_path_factory.mktemp("glue_data"))


def compose_cfg(overrides):
    """The real root config, composed as the CLI does (for in-process tests)."""
    from bench.config.compose import compose

    return compose(list(overrides))


def run_cli_here(args):
    """`python -m bench ...` in this process (bench.cli.main, Hydra's app included), for tests of what the command
    says about bad input: the same exit code, stdout and stderr as `run_cli` (an exception that escapes main
    becomes a traceback on stderr and exit 1, as Python would print it), without the ~5 s of a fresh interpreter.
    Process-wide facts (what a real interpreter prints beside the message) stay with `run_cli` tests."""
    import contextlib
    import io
    import traceback
    from types import SimpleNamespace

    from bench.cli import main

    out, err, argv = io.StringIO(), io.StringIO(), list(sys.argv)
    code = 0
    # run_cli's cwd: Hydra's output folder lands in ROOT/results/hydra (git-ignored), wherever pytest was started
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if isinstance(e.code, str):  # SystemExit("text"): Python prints it and exits 1
                print(e.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - what the interpreter would print, for the test to see
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = argv
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_cli(args, env_extra=None, timeout=600):
    """`python -m bench ...` in a subprocess; returns CompletedProcess."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
