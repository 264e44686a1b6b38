"""Every kernel compiles for an H100 (sm_90) on this machine, GPU or not.

The interpreter tests run the kernels' Python; this runs Triton's real compiler and ptxas on the
launches the launchers make (see segbench.kernels.compile_check). It runs in a child process because
kernels are decorated for the compiler or the interpreter once per process, and the other kernel
test files put this one in interpreter mode.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.slow
@pytest.mark.skipif(not PTXAS.exists(), reason="triton without its bundled NVIDIA toolchain")
def test_kernels_compile_for_sm90_without_spills_or_shared_overflow():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    # bf16 at D=128 is what runs and is benchmarked; the CLI covers the other dtypes and head dims.
    cmd = [sys.executable, "-m", "segbench.kernels.compile_check", "--arch", "90", "--dtypes", "bf16",
           "--head-dims", "128", "--only", "segmented+B+lse,segmented-decode,decode+merge,block-sparse"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    # segmented, its few-query split + merge, decode split + merge, and for each of the 5 pattern blocks
    # block-sparse prefill plus sparse decode split + merge
    assert len(lines) == 1 + 2 + 2 + 5 * 3, report
    assert not any("(spills)" in line for line in lines), report
