"""train.precision=auto from the hardware (mocked /proc/cpuinfo and CUDA device properties), the one-line warning for
bf16 on a CPU without bf16 units, the hardware in the record (issue 26)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.records import hardware, provenance, store as records
from conftest import compose_cfg

AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
               "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
AMX = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) w9-3495X\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def gpu(major: int, minor: int = 0, name: str = "NVIDIA Test GPU") -> dict:
    props = SimpleNamespace(name=name, total_memory=80 * 2**30, major=major, minor=minor)
    return hardware.gpu_info(props, count=1)


# ------------------------------------------------------------------------------------------------
# precision
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cpuinfo,want", [(AVX512_BF16, "bf16"), (AMX, "bf16"), (AVX2_ONLY, "fp32")])
def test_auto_on_cpu_follows_the_bf16_flags(cpuinfo, want):
    precision, why = hardware.resolve_precision("auto", "cpu", cpu=hardware.cpu_info(cpuinfo))
    assert precision == want
    assert why.startswith("auto:")


@pytest.mark.parametrize("major,want", [(8, "bf16"), (9, "bf16"), (7, "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(major, want):
    assert hardware.resolve_precision("auto", "cuda", gpu=gpu(major))[0] == want


def test_explicit_precision_is_kept_and_fp16_never_chosen_on_cpu():
    for cpuinfo in (AVX2_ONLY, AVX512_BF16, AMX):
        cpu = hardware.cpu_info(cpuinfo)
        assert hardware.resolve_precision("auto", "cpu", cpu=cpu)[0] != "fp16"
        for explicit in ("fp32", "bf16", "fp16"):
            assert hardware.resolve_precision(explicit, "cpu", cpu=cpu)[0] == explicit


def host(monkeypatch, cpuinfo: str) -> None:
    """This machine's /proc/cpuinfo, as read by bench.records.hardware, replaced by a given text."""
    model, flags = hardware.parse_cpuinfo(cpuinfo)
    monkeypatch.setattr(hardware, "_host_cpuinfo", lambda: (model, frozenset(flags)))


def test_an_auto_run_hashes_as_its_resolved_value(monkeypatch):
    for cpuinfo, resolved in ((AVX2_ONLY, "fp32"), (AVX512_BF16, "bf16")):
        host(monkeypatch, cpuinfo)
        cfg = compose_cfg(["train.precision=auto"])
        block = hardware.apply_precision(cfg, "cpu")
        assert block == {"requested": "auto", "resolved": resolved, "why": block["why"]}
        assert cfg.train.precision == resolved
        explicit = compose_cfg([f"train.precision={resolved}"])
        assert records.config_hash(_plain(cfg)) == records.config_hash(_plain(explicit))
        assert records.config_hash(_plain(cfg)) != records.config_hash(_plain(compose_cfg(["train.precision=auto"])))


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_bf16_on_a_cpu_without_units_warns_in_one_line():
    line = hardware.bf16_warning("bf16", "cpu", hardware.cpu_info(AVX2_ONLY))
    assert line is not None and "\n" not in line
    assert "AMD EPYC 7B12" in line and "1,497 ms" in line and "30 ms" in line
    assert "train.precision=fp32" in line and "train.precision=auto" in line
    assert hardware.bf16_warning("bf16", "cpu", hardware.cpu_info(AVX512_BF16)) is None
    assert hardware.bf16_warning("bf16", "cpu", hardware.cpu_info(AMX)) is None
    assert hardware.bf16_warning("fp32", "cpu", hardware.cpu_info(AVX2_ONLY)) is None
    assert hardware.bf16_warning("bf16", "cuda", hardware.cpu_info(AVX2_ONLY)) is None


# ------------------------------------------------------------------------------------------------
# hardware in the record
# ------------------------------------------------------------------------------------------------
def test_cpuinfo_parsed_to_model_and_speed_flags():
    info = hardware.cpu_info(AMX)
    assert info == {"cpu_model": "Intel(R) Xeon(R) w9-3495X", "cpu_flags": ["avx2", "avx512f", "amx_bf16", "amx_tile"],
                    "cpu_bf16": True}
    assert hardware.cpu_info(AVX2_ONLY)["cpu_flags"] == ["avx2"]
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n"
    assert hardware.cpu_info(arm) == {"cpu_model": None, "cpu_flags": [], "cpu_bf16": False}


def test_gpu_info_fields():
    g = gpu(8, 0, "NVIDIA A100-SXM4-80GB")
    assert g["gpu"] == "NVIDIA A100-SXM4-80GB" and g["gpu_memory_gb"] == 80.0 and g["gpu_capability"] == "8.0"
    assert g["gpu_bf16"] is True and "cuda_version" in g and "gpu_driver" in g
    assert gpu(7, 5)["gpu_bf16"] is False


def test_device_info_carries_cpu_model_and_flags(monkeypatch):
    monkeypatch.setattr(hardware, "_host_cpuinfo", lambda: ("AMD EPYC 7B12", frozenset({"avx2", "fma"})))
    d = records.device_info()
    assert d["cpu_model"] == "AMD EPYC 7B12" and d["cpu_flags"] == ["avx2"] and d["cpu_bf16"] is False
    assert provenance.hardware_label(d).startswith("AMD EPYC 7B12 (")


def test_bench_perf_shows_the_capability_and_resolves_auto(tmp_path, monkeypatch, capsys):
    from bench.perf import driver as perf

    host(monkeypatch, AVX2_ONLY)
    rec = perf.main(["model=tiny-bert", "task=sst2", "method=lora", "perf.floor=false", "perf.steps=1",
                     "perf.warmup=0", "perf.batch_size=2", "perf.seq_len=8", "perf.eval_steps=1", "perf.threads=1",
                     "perf.device=cpu", "perf.isolate=false", "train.precision=auto", f"perf.results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "[perf] hardware: AMD EPYC 7B12 (flags: avx2): bf16 units no" in out
    assert rec["precision"] == "fp32" and rec["precision_requested"] == "auto"
    assert rec["device"]["cpu_model"] == "AMD EPYC 7B12" and rec["device"]["cpu_flags"] == ["avx2"]
    assert rec["results"]["lora"]["status"] == "ok"


def test_tables_identify_an_auto_config_by_its_resolved_hash(monkeypatch):
    from bench.config.compose import compose
    from bench.config.identity import run_identity

    monkeypatch.setattr(hardware, "train_device", lambda: "cpu")
    for cpuinfo, resolved in ((AVX512_BF16, "bf16"), (AVX2_ONLY, "fp32")):
        host(monkeypatch, cpuinfo)
        auto = run_identity(compose(["train.precision=auto"]))
        assert auto.config["train"]["precision"] == resolved
        assert auto.hash == run_identity(compose([f"train.precision={resolved}"])).hash
