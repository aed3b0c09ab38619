"""Unknown group names at `bench run` get the did-you-mean line `bench params` gives, exit 2 (issue 26)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("arg,close", [("method=lroa", "lora"), ("task=rtee", "rte"), ("model=minlm", "minilm"),
                                       ("method=lora,lroa", "lora")])
def test_unknown_names_at_bench_run_get_the_did_you_mean_line(arg, close, capsys):
    from bench import cli
    from bench.config import names

    args = ["run", *(["-m"] if "," in arg else []), arg]
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    group, name = arg.split("=")[0], arg.split("=")[1].split(",")[-1]
    assert err == [f"error: unknown {group} {name!r} (did you mean {close!r}?); known: "
                   + ", ".join(names.known_names(group))]


def test_bench_params_says_the_same_line(capsys):
    from bench import cli
    from bench.config import names

    with pytest.raises(SystemExit) as e:
        cli.main(["params", "model=minlm"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: unknown model 'minlm' (did you mean 'minilm'?); known: "
                                               + ", ".join(names.known_names("model")))
