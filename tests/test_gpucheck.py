"""`segbench gpu-check` on a machine without a GPU: the one-line refusal, the wall-budget logic on
a fake clock, NVML through a fake module, and the summary/packing from fake rows."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segbench import gpucheck

REPO = Path(__file__).resolve().parent.parent


def test_refuses_in_one_line_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main([]) == 2
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "GPU" in out.out and "make gpu-check" in out.out and not out.err


def test_cli_and_make_target_refuse_without_cuda_and_install_nothing():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "segbench.cli", "gpu-check", "--budget-s", "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout.count("\n") == 1 and "needs an NVIDIA GPU" in proc.stdout
    make = subprocess.run(["make", "-s", "gpu-check", f"GPU_PY={sys.executable}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert make.returncode != 0 and make.stdout.count("\n") == 1 and "needs an NVIDIA GPU" in make.stdout
    assert "pip" not in make.stdout + make.stderr  # the preflight stops it before any install


def test_make_target_installs_without_network_then_runs():
    text = subprocess.run(["make", "-n", "gpu-check", "GPU_PY=python3", "GPU_CHECK_OUT=/tmp/x"], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout
    assert "pip install -q --no-deps --no-build-isolation -e ." in text
    assert "-m segbench.gpucheck --out /tmp/x" in text


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_budget_starts_only_what_fits_and_times_out_inside_the_budget():
    clock = FakeClock()
    budget = gpucheck.Budget(100, reserve_s=10, clock=clock)
    ran, timeouts = [], []

    def step(name, takes):
        def run(timeout):
            ran.append(name)
            timeouts.append(timeout)
            clock.t += min(takes, timeout)  # a step never outlives its timeout (it is killed)
            return "ok"
        return run

    plan = gpucheck.Plan([
        gpucheck.Step("a", 30, 50, step("a", 30)),      # 0 -> 30
        gpucheck.Step("b", 40, 200, step("b", 70)),     # starts at 30 with 60 left: timeout 60, killed at 90
        gpucheck.Step("c", 5, 10, step("c", 5)),        # at 90: 0 left, skipped
        gpucheck.Step("d", 0.0, 10, step("d", 0)),      # an estimate of 0 still fits at 0 left
    ])
    packs = []
    plan.drive(budget, after_each=lambda: packs.append(1))
    assert ran == ["a", "b", "d"]
    assert timeouts[0] == 50 and timeouts[1] == 60
    assert plan.steps[2].outcome.startswith("skipped") and len(packs) == 4
    assert budget.elapsed() <= 100 - 10


def test_a_failing_step_does_not_stop_the_others():
    clock = FakeClock()
    plan = gpucheck.Plan([gpucheck.Step("bad", 1, 5, lambda t: 1 / 0), gpucheck.Step("good", 1, 5, lambda t: "ok")])
    plan.drive(gpucheck.Budget(60, clock=clock))
    assert plan.steps[0].outcome.startswith("error: ZeroDivisionError") and plan.steps[1].outcome == "ok"


class FakeNvml:
    NVML_CLOCK_SM = 1

    def __init__(self, fail=False):
        self.fail, self.shutdown = fail, False

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=143771 * 2**20, used=512 * 2**20, free=0)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200"

    def nvmlSystemGetDriverVersion(self):
        return "580.159.04"

    def nvmlDeviceGetMaxClockInfo(self, handle, kind):
        return 1980


def test_device_info_from_a_fake_nvml():
    nvml = FakeNvml()
    info = gpucheck.device_info(nvml)
    assert info == {"gpu_count": 1, "name": "NVIDIA H200", "driver": "580.159.04",
                    "memory_total_bytes": 143771 * 2**20, "memory_used_idle_bytes": 512 * 2**20, "sm_clock_max_mhz": 1980}
    assert nvml.shutdown
    assert gpucheck.device_info(FakeNvml(fail=True))["error"].startswith("NVML: RuntimeError")


def _row(suite, label, context, **kw):
    return {"suite": suite, "label": label, "context_len": context, "status": "ok", "config_hash": f"{label}{context}",
            "cuda_max_allocated_bytes": 20 * 2**30, "cuda_max_reserved_bytes": 22 * 2**30,
            "nvml_peak_used_bytes": 23 * 2**30, "peak_prefill_over_weights_bytes": 5 * 2**30,
            "kv_cache_bytes": 4 * 2**30, "est_peak_prefill_bytes": 21 * 2**30, "peak_prefill_mem_bytes": 34_000_000_000,
            "ttft_s": 4.0, "decode_ms_p50": 25.0, **kw}


def test_summary_and_pack_make_three_files(tmp_path):
    work, out = tmp_path / "work", tmp_path / "OUT"
    for suite, label, ctx in (("gpu_check_paper80k", "full", 81920), ("gpu_check_paper80k", "segmented", 81920),
                              ("gpu_check_prefill", "snapkv", 32768)):
        cell = work / "runs" / suite / "cells"
        cell.mkdir(parents=True, exist_ok=True)
        (cell / f"{label}.json").write_text(json.dumps(_row(suite, label, ctx)))
    (work / "kernels.json").write_text(json.dumps({"device": "NVIDIA H200", "timing": "do_bench", "rows": [
        {"kernel": "decode", "context": 131072, "ms": 0.2, "tflops": None, "gb_per_s": 2600.0, "pct_hbm": 54.2,
         "pct_of_baseline": 180.0, "baseline": "torch GQA matmul", "note": ""}]}))
    (work / "nvidia-smi.txt").write_text("fake")
    steps = [gpucheck.Step("machine", 1, 1, lambda t: "ok", outcome="NVIDIA H200", wall_s=1.0)]
    gpucheck.pack(work, out, steps)
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz", "rows.csv", "summary.md"]
    text = (out / "summary.md").read_text()
    assert "| gpu_check_paper80k | full | 81920 | ok | 20.00 | 22.00 | 23.00 | 5.00 | 4.00 | 21.00 | 4.00 | 25.0 |" in text
    assert "| full | 34.00 | 34.67 | 4.00 | 4.13 |" in text and "| segmented | 34.00 | 19.06 |" in text
    assert "| decode | 131072 | 0.200 |  | 2600 | 54.2 | 180 | torch GQA matmul |" in text
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-check/nvidia-smi.txt" in names and "gpu-check/runs/gpu_check_prefill/cells/snapkv.json" in names
    assert len((out / "rows.csv").read_text().splitlines()) == 4


def test_plan_orders_paper_point_then_the_headline_then_short_to_long():
    args = gpucheck.parser().parse_args(["--contexts", "32768,131072"])
    suites = gpucheck.cell_suites(args)
    names = [(s["name"], s["methods"][0]["label"], s["contexts"][0]) for s, _ in suites]
    assert names[:2] == [("gpu_check_paper80k", "full", 81920), ("gpu_check_paper80k", "segmented", 81920)]
    assert names[2:4] == [("gpu_check_prefill", "full", 131072), ("gpu_check_prefill", "segmented", 131072)]
    assert [c for _, _, c in names[4:]] == [32768] * 6 + [131072] * 4
    assert len(set(names)) == len(names) == 14
    paper = suites[0][0]
    assert paper["model"] == {"name": "llama-2-7b", "overrides": {"max_position_embeddings": 81920}}
    assert all(s["workload"]["warmup"] == 1 and s["workload"]["repeats"] == 1 for s, _ in suites)
    from segbench.suite import parse_suite

    for raw, estimate in suites:  # every generated suite is valid
        parse_suite({**raw, "limits": {"timeout_s": 60}}, where="test")
        assert estimate > 0


def test_out_dir_prefers_flag_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path / "o"))
    monkeypatch.setenv("SEGBENCH_GPU_CHECK_OUT", str(tmp_path / "s"))
    assert gpucheck.out_dir(str(tmp_path / "f")) == tmp_path / "f"
    assert gpucheck.out_dir(None) == tmp_path / "s"
    monkeypatch.delenv("SEGBENCH_GPU_CHECK_OUT")
    assert gpucheck.out_dir(None) == tmp_path / "o"


def test_plan_prints_what_fits_without_a_gpu(capsys):
    assert gpucheck.main(["--plan", "--budget-s", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run ") and "machine" in lines[0]
    assert any(line.startswith("skip") and "131072" in line for line in lines)  # 128K cells do not fit 200 s
    assert lines[-1].endswith("(15 s kept to pack the results)")


def test_a_cell_step_runs_through_the_runner_and_lands_in_the_summary(tmp_path):
    """The cell step on a CPU miniature of a generated suite: the runner's row is read back, its
    outcome reported, and it reaches summary.md and the archive."""
    args = gpucheck.parser().parse_args(["--contexts", "32768"])
    raw = next(s for s, _ in gpucheck.cell_suites(args) if s["name"] == "gpu_check_prefill")
    raw = {**raw, "model": "tiny-llama", "device": "cpu", "dtype": "float32", "contexts": [256],
           "workload": {**raw["workload"], "decode_tokens": 2}}
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    step = gpucheck.Step("cell", 1, 120, gpucheck._cell_runner(raw, work / "runs"))
    gpucheck.Plan([step]).drive(gpucheck.Budget(300))
    assert step.outcome == "ok", step.outcome
    gpucheck.pack(work, tmp_path / "OUT", [step])
    text = (tmp_path / "OUT" / "summary.md").read_text()
    assert "| gpu_check_prefill | full | 256 | ok |" in text and "| cell | ok |" in text
