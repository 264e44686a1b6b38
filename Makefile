# The README's two commands: `make demo` (set up + run the CPU smoke suite + print the report)
# and `make test` (set up + run the test suite). Both work on a fresh machine without a GPU.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint clean gpu-check

setup: $(VENV)/.installed

# torch is pinned to the CPU build first: an unpinned torch (or a range resolved from scratch)
# pulls several GB of CUDA packages. Once 2.13.0 is in, segbench's `torch>=2.4` installs nothing more.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,dashboard,accuracy,ray,slurm]'
	$(BIN)/python -m pip install -q --no-deps -e examples/random_evict
	touch $@

demo: setup
	$(BIN)/segbench run suites/cpu_smoke.yaml

test: setup
	SEGBENCH_REQUIRE_PLUGIN_EXAMPLE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check segbench methods kernels dashboard tests

clean:
	rm -rf $(VENV) results/cpu_smoke build *.egg-info

# Every GPU number from one command on a bare GPU machine (torch, triton, transformers already there;
# no network): install segbench without fetching anything, then `segbench gpu-check` (pytest -m gpu,
# kernel bench, the 80K paper point, prefill_128k at 32K/128K) under a wall budget. Results: one
# folder (GPU_CHECK_OUT, else $$OUT, else results/gpu/<time>) with summary.md, rows.csv and
# gpu-check.tar.gz. On a machine without a GPU it says so in one line and exits 2, installing nothing.
GPU_PY ?= python3
GPU_CHECK_FLAGS ?=
gpu-check:
	@$(GPU_PY) -m segbench.gpucheck --preflight
	$(GPU_PY) -m pip install -q --no-deps --no-build-isolation -e . || echo "gpu-check: editable install failed; running from the source tree"
	$(GPU_PY) -m segbench.gpucheck $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) $(GPU_CHECK_FLAGS)
