"""``segbench gpu-check`` (``make gpu-check``): every GPU number from one command, under a wall budget.

Meant for a GPU lent for minutes (a bare image: torch, triton, transformers, no network). In order
of value, each step started only if its estimate fits what is left of ``--budget-s``:

1. the machine: ``nvidia-smi``, NVML's view, package versions;
2. ``pytest -m gpu`` (bf16 accuracy of the kernels on the GPU; pytest-benchmark timing disabled);
3. ``segbench bench kernels`` at 8K/32K/128K (do_bench, L2 flushed): % of the baselines;
4. the paper's comparison point: a Llama-2-7B shape with its context raised to 80K, full one-shot
   vs segmented at 80K (the paper: 34.67 vs 19.06 GB peak prefill, TTFT 4.13 vs 3.49 s);
5. a slice of ``suites/prefill_128k.yaml``: full and segmented at 128K, then every method at 32K,
   then the other methods at 128K (warmup 1, repeats 1).

Cells run through the ordinary runner (a fresh process each, NVML and allocator trackers), one at
a time, each with a timeout that ends inside the budget. Every raw row, log and the machine's
description go into one ``gpu-check.tar.gz`` in the results folder (``--out``, else
``$SEGBENCH_GPU_CHECK_OUT``, else ``$OUT``, else ``results/gpu/<UTC time>``), repacked after every
step so a hard kill still leaves what finished, beside ``summary.md`` (the tables printed at the
end) and ``rows.csv``: three files, so they all come back from a machine that returns few.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAPER = {"full": (34.67, 4.13), "segmented": (19.06, 3.49)}  # peak prefill GB, TTFT s at 80K (arXiv 2605.11744)
PAPER_CONTEXT = 81920
NEEDS = ("segbench gpu-check needs an NVIDIA GPU that torch can use (torch.cuda.is_available() is False here); "
         "run `make gpu-check` on a GPU machine (README: GPU check)")


class Budget:
    """The wall budget: a step starts only if its estimate fits, and runs with a timeout that ends
    ``reserve_s`` before the budget does (time to pack and summarise)."""

    def __init__(self, total_s: float, reserve_s: float = 15.0, clock: Callable[[], float] = time.monotonic):
        self.total_s, self.reserve_s, self.clock = total_s, reserve_s, clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds a step may still use."""
        return self.total_s - self.reserve_s - self.elapsed()

    def can_start(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()

    def timeout(self, cap_s: float) -> float:
        return max(1.0, min(cap_s, self.left()))


@dataclass
class Step:
    name: str
    estimate_s: float        # what it usually takes on an H100/H200: decides whether it starts
    cap_s: float             # the most it may take even with budget left
    run: Callable[[float], str]  # gets its timeout, returns a one-line outcome
    outcome: str = ""
    wall_s: float = 0.0


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def drive(self, budget: Budget, after_each: Callable[[], None] = lambda: None) -> None:
        """Run the steps in order; one whose estimate no longer fits is skipped (a later, cheaper one
        may still fit). ``after_each`` repacks the results."""
        for step in self.steps:
            if not budget.can_start(step.estimate_s):
                step.outcome = f"skipped: needs ~{step.estimate_s:.0f} s, {max(budget.left(), 0):.0f} s left"
            else:
                t0 = budget.clock()
                try:
                    step.outcome = step.run(budget.timeout(step.cap_s))
                except Exception as exc:  # one broken step must not lose the others' results
                    step.outcome = f"error: {type(exc).__name__}: {exc}"
                step.wall_s = budget.clock() - t0
            print(f"gpu-check: {step.name}: {step.outcome} ({step.wall_s:.0f} s)", flush=True)
            after_each()


# --------------------------------------------------------------------------------------------
# The machine


def device_info(nvml=None) -> dict:
    """Name, driver, memory and clocks of GPU 0 by NVML (``nvml``: the pynvml module, or a fake)."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            driver = nvml.nvmlSystemGetDriverVersion()
            return {"gpu_count": nvml.nvmlDeviceGetCount(),
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "driver": driver.decode() if isinstance(driver, bytes) else driver,
                    "memory_total_bytes": int(mem.total), "memory_used_idle_bytes": int(mem.used),
                    "sm_clock_max_mhz": nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)}
        finally:
            nvml.nvmlShutdown()
    except Exception as exc:
        return {"error": f"NVML: {type(exc).__name__}: {exc}"}


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "triton", "transformers", "numpy", "pandas", "pytest", "nvidia-ml-py", "segbench"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    import torch

    out["torch_cuda"] = torch.version.cuda or ""
    try:
        out["git_sha"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
    except Exception:
        out["git_sha"] = ""
    return out


def _command(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, output to ``log``; on timeout kill the whole group (a
    forkserver or pytest child must not outlive it holding GPU memory). (returncode or None, tail)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = None
    lines = log.read_text(errors="replace").strip().splitlines()
    return rc, (lines[-1] if lines else "")


def ensure_importable() -> bool:
    """Without an install (the editable install failed), let this process and every child import
    ``segbench.kernels``/``segbench.methods`` from the source tree: they live at the top level and
    are mapped into ``segbench`` only by the install. Returns whether the shim was needed."""
    import importlib.util

    import segbench

    if importlib.util.find_spec("segbench.kernels") is not None:
        return False
    segbench.__path__.append(str(REPO))
    shim = Path(tempfile.mkdtemp(prefix="segbench-shim-"))
    (shim / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\ntry:\n    import segbench\n"
        f"    segbench.__path__.append({str(REPO)!r})\nexcept Exception:\n    pass\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return True


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --------------------------------------------------------------------------------------------
# The steps


def build_plan(work: Path, args: argparse.Namespace) -> Plan:
    plan = Plan()

    def machine(timeout: float) -> str:
        for name, cmd in (("nvidia-smi.txt", ["nvidia-smi"]),
                          ("nvidia-smi-q.txt", ["nvidia-smi", "-q", "-d", "MEMORY,CLOCK,POWER,PERFORMANCE"])):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=min(timeout, 30))
                (work / name).write_text(out.stdout + out.stderr)
            except Exception as exc:
                (work / name).write_text(f"{cmd[0]} failed: {exc}\n")
        info = {"device": device_info(), "versions": versions(), "argv": sys.argv, "budget_s": args.budget_s}
        (work / "machine.json").write_text(json.dumps(info, indent=1))
        return f"{info['device'].get('name', '?')}, driver {info['device'].get('driver', '?')}"

    def pytest_gpu(timeout: float) -> str:
        # A test module that cannot import here (a UI package missing from the image) must not stop the rest.
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               "tests"]
        try:
            import pytest_benchmark  # noqa: F401  (the image has it; the bench step does the timing)

            cmd.append("--benchmark-disable")
        except ImportError:
            pass
        rc, tail = _command(cmd, work / "pytest-gpu.log", timeout, {"TRITON_INTERPRET": "0"})
        return tail if rc is not None else f"timed out after {timeout:.0f} s: {tail}"

    def kernels(timeout: float) -> str:
        cmd = _py("import sys; from segbench.cli import main; sys.exit(main(sys.argv[1:]))") + [
            "bench", "kernels", "--contexts", args.kernel_contexts, "--warmup", "10", "--rep", "50",
            "--budget-s", str(max(timeout - 20, 5)), "--json", str(work / "kernels.json")]
        rc, tail = _command(cmd, work / "bench-kernels.log", timeout, {"TRITON_INTERPRET": "0"})
        return f"exit {rc}" if rc is not None else f"timed out after {timeout:.0f} s"

    plan.steps += [Step("machine", 5, 40, machine), Step("pytest -m gpu", 60, 150, pytest_gpu),
                   Step("bench kernels", 75, 150, kernels)]
    for suite_raw, estimate in cell_suites(args):
        method, context = suite_raw["methods"][0]["label"], suite_raw["contexts"][0]
        plan.steps.append(Step(f"{suite_raw['name']} {method} {context}", estimate, args.cell_cap_s,
                               _cell_runner(suite_raw, work / "runs")))
    return plan


def cell_suites(args: argparse.Namespace) -> list[tuple[dict, float]]:
    """One single-cell suite per (method, context), most telling first: the paper's point, then
    full vs segmented at the longest context (the headline), then every method at each context,
    shortest first (what the budget cuts is the long tail)."""
    import yaml

    base = yaml.safe_load((REPO / "suites" / "prefill_128k.yaml").read_text())
    base["workload"] = {**base.get("workload", {}), "warmup": 1, "repeats": 1, "decode_tokens": args.decode_tokens}
    out = []
    paper = copy.deepcopy(base)
    paper.update(name="gpu_check_paper80k", model={"name": "llama-2-7b", "overrides": {"max_position_embeddings": PAPER_CONTEXT}},
                 dtype="float16", description="the paper's comparison point: Llama-2-7B shape at 80K")
    for entry in base["methods"]:
        if entry["label"] in PAPER:
            out.append(({**paper, "methods": [entry], "contexts": [PAPER_CONTEXT]}, _estimate(PAPER_CONTEXT)))
    contexts = sorted(int(c) for c in args.contexts.split(",") if c.strip())
    order = [(contexts[-1], e) for e in base["methods"] if e["label"] in PAPER] if contexts else []
    order += [(c, e) for c in contexts for e in base["methods"] if (c, e) not in order]
    for context, entry in order:
        out.append(({**base, "name": "gpu_check_prefill", "methods": [entry], "contexts": [context]},
                    _estimate(context)))
    return out


def _estimate(context: int) -> float:
    """Seconds one cell takes on an H100/H200 (8B, bf16): process and model ~10 s, plus two
    prefills and the decode, growing a little faster than the context."""
    return 10 + 40 * (context / 131072) ** 1.5


def _cell_runner(suite_raw: dict, out_root: Path) -> Callable[[float], str]:
    def run(timeout: float) -> str:
        from segbench.runner import run_suite
        from segbench.suite import parse_suite

        raw = {**suite_raw, "limits": {"timeout_s": timeout}}
        suite = parse_suite(raw, where=f"gpu-check {suite_raw['name']}")
        summary = run_suite(suite, out_root, progress=False)
        rows = [r for r in _rows(out_root) if r.get("config_hash") in {c.config_hash for c in suite.cells()}]
        if not rows:
            return f"no row ({summary.statuses})"
        r = rows[-1]
        detail = f": {r.get('status_detail')}" if r.get("status") != "ok" else ""
        return f"{r.get('status')}{detail}"

    return run


def _rows(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/cells/*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    return rows


# --------------------------------------------------------------------------------------------
# Summary and packing


def _gib(v) -> str:
    return "" if v is None or v != v else f"{v / 2**30:.2f}"


def summary_tables(rows: list[dict], kernels: dict | None, steps: list[Step]) -> str:
    """Markdown: cells (per method and context), the paper's point beside ours, kernels, steps."""
    cols = ("suite", "method", "context", "status", "peak alloc GiB", "reserved GiB", "NVML GiB", "peak-weights GiB",
            "stored KV GiB", "estimate GiB", "TTFT s", "decode p50 ms")
    lines = ["## Cells (peak prefill memory; NVML: device used over the idle baseline)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: (r.get("suite", ""), r.get("context_len", 0), r.get("label", ""))):
        ttft, p50 = r.get("ttft_s"), r.get("decode_ms_p50")
        cells = (r.get("suite", ""), r.get("label", ""), str(r.get("context_len", "")), r.get("status", ""),
                 _gib(r.get("cuda_max_allocated_bytes")), _gib(r.get("cuda_max_reserved_bytes")),
                 _gib(r.get("nvml_peak_used_bytes")), _gib(r.get("peak_prefill_over_weights_bytes")),
                 _gib(r.get("kv_cache_bytes")), _gib(r.get("est_peak_prefill_bytes")),
                 "" if ttft is None else f"{ttft:.2f}", "" if p50 is None else f"{p50:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## The paper's comparison point (Llama-2-7B shape, {PAPER_CONTEXT} tokens, fp16)", "",
              "| method | peak prefill GB (ours, 1e9 B) | paper GB | TTFT s (ours) | paper TTFT s |", "|---|---|---|---|---|"]
    for label, (paper_gb, paper_ttft) in PAPER.items():
        mine = [r for r in rows if r.get("suite") == "gpu_check_paper80k" and r.get("label") == label]
        peak = mine[0].get("peak_prefill_mem_bytes") if mine and mine[0].get("status") == "ok" else None
        ttft = mine[0].get("ttft_s") if mine and mine[0].get("status") == "ok" else None
        lines.append(f"| {label} | {'' if peak is None else f'{peak / 1e9:.2f}'} | {paper_gb} | "
                     f"{'' if ttft is None else f'{ttft:.2f}'} | {paper_ttft} |")
    if kernels:
        lines += ["", f"## Kernels on {kernels.get('device', '?')} ({kernels.get('timing', '')})", "",
                  "| kernel | context | ms | TFLOP/s | GB/s | % HBM | % of baseline | baseline | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k in kernels.get("rows", []):
            def f(key, spec, k=k):
                return "" if k.get(key) is None else format(k[key], spec)

            lines.append(f"| {k['kernel']} | {k['context']} | {f('ms', '.3f')} | {f('tflops', '.1f')} | "
                         f"{f('gb_per_s', '.0f')} | {f('pct_hbm', '.1f')} | {f('pct_of_baseline', '.0f')} | "
                         f"{k.get('baseline', '')} | {k.get('note', '')} |")
    lines += ["", "## Steps", "", "| step | outcome | s |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.outcome.replace('|', '/')} | {s.wall_s:.0f} |" for s in steps]
    return "\n".join(lines) + "\n"


def pack(work: Path, out: Path, steps: list[Step]) -> None:
    """out/gpu-check.tar.gz (everything raw), out/summary.md, out/rows.csv: written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(work / "runs")
    kernels_path = work / "kernels.json"
    kernels = json.loads(kernels_path.read_text()) if kernels_path.is_file() else None
    text = summary_tables(rows, kernels, steps)
    (work / "summary.md").write_text(text)
    (work / "steps.json").write_text(json.dumps([{"name": s.name, "outcome": s.outcome, "wall_s": s.wall_s}
                                                 for s in steps], indent=1))
    for name, write in (("summary.md", lambda p: p.write_text(text)), ("rows.csv", lambda p: _write_csv(rows, p)),
                        ("gpu-check.tar.gz", lambda p: _tar(work, p))):
        tmp = out / f".{name}.tmp"
        write(tmp)
        tmp.replace(out / name)


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


def _tar(work: Path, path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(work, arcname="gpu-check")


def out_dir(flag: str | None) -> Path:
    chosen = flag or os.environ.get("SEGBENCH_GPU_CHECK_OUT") or os.environ.get("OUT")
    return Path(chosen) if chosen else REPO / "results" / "gpu" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench gpu-check", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="results folder (default: $SEGBENCH_GPU_CHECK_OUT, $OUT, or results/gpu/<UTC time>)")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall budget; no step starts that would not fit")
    p.add_argument("--contexts", default="32768,131072", help="prefill_128k contexts to run every method at")
    p.add_argument("--kernel-contexts", default="8192,32768,131072")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--cell-cap-s", type=float, default=180.0, help="the most one cell may take")
    p.add_argument("--preflight", action="store_true", help="only check that this machine can run it")
    p.add_argument("--plan", action="store_true", help="print the steps, their usual durations and which fit the "
                   "budget, run nothing (works without a GPU)")
    return p


def print_plan(args: argparse.Namespace) -> None:
    """The steps in order with their estimates, marking those an on-estimate run would skip."""
    plan = build_plan(Path(tempfile.gettempdir()), args)
    clock = [0.0]
    budget = Budget(args.budget_s, clock=lambda: clock[0])
    for step in plan.steps:
        fits = budget.can_start(step.estimate_s)
        print(f"{'run ' if fits else 'skip'} ~{step.estimate_s:4.0f} s  {step.name}")
        clock[0] += step.estimate_s if fits else 0
    print(f"~{clock[0]:.0f} s of a {args.budget_s:.0f} s budget ({budget.reserve_s:.0f} s kept to pack the results)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.plan:
        print_plan(args)
        return 0
    try:
        import torch
    except ImportError:
        print(NEEDS.replace("torch.cuda.is_available() is False here", "torch is not installed here"))
        return 2
    if not torch.cuda.is_available():
        print(NEEDS)
        return 2
    if args.preflight:
        return 0
    out = out_dir(args.out)
    budget = Budget(args.budget_s)
    if ensure_importable():
        print("gpu-check: segbench is not installed; running from the source tree", flush=True)
    work = Path(tempfile.mkdtemp(prefix="segbench-gpu-check-"))
    (work / "runs").mkdir()
    plan = build_plan(work, args)
    print(f"gpu-check: {len(plan.steps)} steps, budget {args.budget_s:.0f} s, results in {out}", flush=True)
    try:
        plan.drive(budget, after_each=lambda: pack(work, out, plan.steps))
    finally:
        pack(work, out, plan.steps)
        shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.md").read_text())
    print(f"gpu-check: done in {budget.elapsed():.0f} s; {out}/summary.md, rows.csv, gpu-check.tar.gz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
