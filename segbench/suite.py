"""Suite files: YAML validated into frozen, typed configs, then expanded into cells.

A cell is one (method entry, context, task, process repeat). Its key is a hash of its canonical
config, so a re-run finds what is already done however the suite file was reordered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from segbench.errors import UserError, did_you_mean
from segbench.method import load_plugins, make_params, method_class
from segbench.models import config_values, is_local_path, preset_values, shape_of
from segbench.typed import from_dict, to_dict

SCHEMA_VERSION = 1
MAX_TIMEOUT_S = 30 * 24 * 3600
MAX_MEM_GB = 1e6
MAX_SEED = 2**32 - 1  # torch, numpy and random all take it; the cell adds the context length to it
MAX_CONTEXT = 2**31 - 1
MAX_SLURM_MINUTES = 366 * 24 * 60
MAX_VALUES = 1_000_000  # values in a suite file once aliases are expanded
MAX_PARALLEL = 100_000  # cells in flight, GPUs or CPUs per cell: beyond any cluster
MAX_CELLS = 100_000  # a suite beyond this is a typo (process_repeats: 1e9), not a sweep anyone can run


@dataclass(frozen=True)
class ModelSpec:
    name: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodEntry:
    method: str
    label: str = ""
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    decode_tokens: int = 16
    warmup: int = 1
    repeats: int = 3
    process_repeats: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("decode_tokens", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("repeats", "process_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 1800.0
    host_mem_cap_gb: float | None = None  # CPU runs: address space a cell may add after it starts

    def __post_init__(self) -> None:
        # Bounded above too: a wait past ~a month overflows the OS timers, a cap past 1 PB overflows RLIMIT_AS.
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be > 0 and at most {MAX_TIMEOUT_S} (30 days)")
        if self.host_mem_cap_gb is not None and not 0 < self.host_mem_cap_gb <= MAX_MEM_GB:
            raise ValueError(f"host_mem_cap_gb must be > 0 and at most {MAX_MEM_GB:g}")


def slurm_minutes(time: int | str) -> int:
    """Slurm's --time grammar (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) as whole minutes, rounded up."""
    if isinstance(time, int):
        minutes = time
    else:
        text = time.strip()
        days, dash, rest = text.rpartition("-")
        parts = rest.split(":")
        digits = [days] * bool(dash) + parts  # "-1" has a dash and no days: not a time
        if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in digits) or len(parts) > 3:
            raise ValueError(f"time {time!r} is not a Slurm time (minutes, H:MM:SS or D-HH:MM:SS)")
        nums = [int(p) for p in parts]
        if days:  # with days, the fields after the dash are hours[:minutes[:seconds]]
            h, m, sec = (nums + [0, 0])[:3]
            seconds = ((int(days) * 24 + h) * 60 + m) * 60 + sec
        else:  # without, minutes | minutes:seconds | hours:minutes:seconds
            h, m, sec = {1: (0, nums[0], 0), 2: (0, *nums), 3: tuple(nums)}[len(nums)]
            seconds = (h * 60 + m) * 60 + sec
        minutes = -(-seconds // 60)
    if not 1 <= minutes <= MAX_SLURM_MINUTES:
        raise ValueError(f"time {time!r} must be at least one minute and at most a year")
    return minutes


@dataclass(frozen=True)
class SlurmSpec:
    partition: str | None = None
    account: str | None = None
    time: int | str | None = None  # minutes or Slurm's [D-]H:M:S; default: the cell timeout + 10 min
    # "local" runs the same submitit path with its LocalExecutor: a Slurm sweep rehearsed on one machine.
    cluster: Literal["slurm", "local"] = "slurm"

    def __post_init__(self) -> None:
        if self.time is not None:
            slurm_minutes(self.time)


@dataclass(frozen=True)
class LauncherSpec:
    """Where cells run. Policy, not identity: none of it enters a cell's config hash."""

    kind: Literal["local", "ray", "slurm"] = "local"
    gpus_per_cell: int = 1
    cpus_per_cell: int = 1
    max_parallel: int | None = None  # cells in flight at once; default: what the machine or cluster holds
    host_mem_gb: float | None = None  # host memory reserved per cell; default: the method's analytic estimate
    retries: int = 1  # re-submissions of a cell whose task or node was lost (status lost) within one run
    slurm: SlurmSpec = field(default_factory=SlurmSpec)

    def __post_init__(self) -> None:
        for name in ("gpus_per_cell", "cpus_per_cell"):
            if not 1 <= getattr(self, name) <= MAX_PARALLEL:
                raise ValueError(f"{name} must be >= 1 and at most {MAX_PARALLEL}")
        if self.max_parallel is not None and not 1 <= self.max_parallel <= MAX_PARALLEL:
            raise ValueError(f"max_parallel must be >= 1 and at most {MAX_PARALLEL}")
        if self.host_mem_gb is not None and not 0 < self.host_mem_gb <= MAX_MEM_GB:
            raise ValueError(f"host_mem_gb must be > 0 and at most {MAX_MEM_GB:g}")
        if not 0 <= self.retries <= 100:
            raise ValueError("retries must be between 0 and 100")


@dataclass(frozen=True)
class TaskSet:
    """Accuracy tasks: each (method entry, context, task) becomes one cell scoring `n` samples."""

    benchmark: Literal["ruler", "longbench", "longbench_e", "longbench_v2"]
    names: tuple[str, ...] = ()  # empty: every task of the benchmark
    n: int = 8  # samples per cell (longbench_e: per length bucket)
    seed: int = 0
    data_dir: str | None = None  # SQuAD/HotpotQA for RULER qa, LongBench jsonl files
    haystack: str | None = None  # essay text for RULER's essay-haystack tasks
    chat_template: bool | None = None  # None: RULER's choice for the model family (instruct/chat: yes)
    scorer: Literal["official", "strict"] = "official"  # longbench_v2: official skips empty outputs

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.scorer != "official" and self.benchmark != "longbench_v2":
            raise ValueError("scorer: strict applies to longbench_v2 only")

    def options(self) -> dict:
        """What a cell's samples and score depend on (part of its config hash)."""
        out = {"n": self.n, "seed": self.seed, "data_dir": self.data_dir, "haystack": self.haystack,
               "chat_template": self.chat_template}
        if self.benchmark == "longbench_v2":
            out["scorer"] = self.scorer
        return out


@dataclass(frozen=True)
class SuiteFile:
    """The YAML as written (before method params are resolved)."""

    model: ModelSpec
    contexts: tuple[int, ...]
    methods: tuple[MethodEntry, ...]
    name: str = ""
    description: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: Literal["cpu", "cuda"] = "cuda"
    workload: Workload = field(default_factory=Workload)
    limits: Limits = field(default_factory=Limits)
    skip_longer_after_oom: bool = True
    plugins: tuple[str, ...] = ()
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    latency: bool = True  # the prefill + decode workload on random ids; false: accuracy cells only
    tasks: tuple[TaskSet, ...] = ()


@dataclass(frozen=True)
class Cell:
    suite: str
    method: str
    label: str
    params: dict
    model: str
    model_overrides: dict
    dtype: str
    device: str
    context_len: int
    workload: Workload
    repeat_group: int
    task: str = ""
    task_options: dict = field(default_factory=dict)

    def key_fields(self) -> dict:
        """What the result depends on. Labels and limits are presentation and policy, not identity."""
        return {
            "schema": SCHEMA_VERSION,
            "model": self.model,
            "model_overrides": self.model_overrides,
            "method": self.method,
            "params": self.params,
            "context_len": self.context_len,
            "task": self.task,
            "task_options": self.task_options,
            "workload": to_dict(self.workload),
            "dtype": self.dtype,
            "device": self.device,
            "repeat_group": self.repeat_group,
        }

    @property
    def config_hash(self) -> str:
        canonical = json.dumps(self.key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        rep = f" #{self.repeat_group}" if self.repeat_group else ""
        task = f" [{self.task}]" if self.task else ""
        return f"{self.label} @ {self.context_len}{task}{rep}"


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path | None
    spec: SuiteFile
    params: tuple[dict, ...]  # resolved, defaults filled, one per method entry

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path else None

    def cells(self) -> list[Cell]:
        """Method entries in suite order, contexts ascending within each: skip-after-OOM needs that order."""
        s = self.spec
        jobs = [("", {}, rep) for rep in range(s.workload.process_repeats)] if s.latency else []
        for task_set in s.tasks:
            options = task_set.options()
            names = task_set.names or task_names(task_set.benchmark)
            jobs += [(f"{task_set.benchmark}/{name}", options, 0) for name in names]
        out = []
        for entry, params in zip(s.methods, self.params):
            for ctx in sorted(s.contexts):
                for task, options, rep in jobs:
                    out.append(
                        Cell(
                            suite=self.name,
                            method=entry.method,
                            label=entry.label or entry.method,
                            params=params,
                            model=s.model.name,
                            model_overrides=dict(s.model.overrides),
                            dtype=s.dtype,
                            device=s.device,
                            context_len=ctx,
                            workload=s.workload,
                            repeat_group=rep,
                            task=task,
                            task_options=dict(options),
                        )
                    )
        return out


def load_suite(path: str | Path, *, device: str | None = None, model: str | None = None,
               contexts: list[int] | None = None, launcher: dict | None = None) -> Suite:
    """Read, validate and resolve a suite file; CLI overrides turn a GPU suite into a CPU miniature."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        hint = f", e.g. {path / found[0]}" if found else ""
        raise UserError(f"{str(path)!r} is a directory; give a suite YAML file{hint}")
    if not path.is_file():
        raise UserError(f"suite file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"save the suite file as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read suite file {str(path)!r} ({e.strerror}); check its permissions") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a suite file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: invalid YAML{where}: {problem}") from None
    if _expanded_size(raw, MAX_VALUES) > MAX_VALUES:
        raise UserError(f"{path}: expands to more than {MAX_VALUES} values (aliases of aliases?); write a smaller suite")
    return parse_suite(raw, where=str(path), path=path, device=device, model=model, contexts=contexts,
                       launcher=launcher)


def _expanded_size(value, limit: int) -> int:
    """How many values `value` holds once YAML aliases are expanded, counting no further than `limit`.

    Aliases share objects, so a few lines can stand for billions of values ("billion laughs"):
    every later walk (type checks, the config hash) would then run for ever.
    """
    count, todo = 0, [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return count


def parse_suite(raw, *, where: str, path: Path | None = None, device: str | None = None,
                model: str | None = None, contexts: list[int] | None = None, launcher: dict | None = None) -> Suite:
    if raw is None:
        raise UserError(f"{where}: the suite file is empty")
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a suite is a mapping of keys (model, contexts, methods, ...), got {type(raw).__name__}")
    raw = dict(raw)
    if isinstance(raw.get("model"), str):
        raw["model"] = {"name": raw["model"]}
    if isinstance(raw.get("launcher"), str):  # `launcher: ray` is short for `launcher: {kind: ray}`
        raw["launcher"] = {"kind": raw["launcher"]}
    if model is not None:
        raw["model"] = {"name": model}
    if device is not None:
        raw["device"] = device
    if contexts is not None:
        raw["contexts"] = list(contexts)
    if launcher:
        raw["launcher"] = _merge_launcher(raw.get("launcher"), launcher)
    spec: SuiteFile = from_dict(SuiteFile, raw, where)
    _check_spec(spec, where)
    spec = _resolve_tasks(spec, where, path.parent if path else None)
    try:
        load_plugins(spec.plugins, path.parent if path else None)
    except UserError as e:
        raise UserError(f"{where}: plugins: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's own module failed to import: say which, in one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{where}: plugins: importing {', '.join(spec.plugins)} failed ({type(e).__name__}: "
                        f"{first}); fix the plugin") from None
    params = []
    seen: dict[str, int] = {}
    labels: dict[str, int] = {}
    for i, entry in enumerate(spec.methods):
        at = f"{where}: methods[{i}]"
        try:
            method_class(entry.method)
        except UserError as e:
            raise UserError(f"{at}.method: {e}") from None
        p = to_dict(make_params(entry.method, entry.params, f"{at}.params"))
        identity = json.dumps([entry.method, p], sort_keys=True)
        if identity in seen:
            raise UserError(f"{at}: same method and params as methods[{seen[identity]}]; give different params")
        seen[identity] = i
        label = entry.label or entry.method
        if label in labels:
            raise UserError(f"{at}: label {label!r} is already used by methods[{labels[label]}]; labels must be unique")
        labels[label] = i
        params.append(p)
    name = spec.name or (path.stem if path else "suite")
    return Suite(name=name, path=path, spec=spec, params=tuple(params))


def _merge_launcher(written, overrides: dict) -> dict:
    """The suite's launcher section with command-line values on top (one level deep, for `slurm`)."""
    if written is not None and not isinstance(written, dict):
        return written  # left as written, so validation names the malformed section
    merged = dict(written or {})
    for key, value in overrides.items():
        if key == "slurm" and isinstance(merged.get("slurm"), dict):
            merged["slurm"] = {**merged["slurm"], **value}
        else:
            merged[key] = value
    return merged


def task_names(benchmark: str) -> tuple[str, ...]:
    """Task names of a benchmark, from its config tables (no torch, no tokenizer imported)."""
    if benchmark == "ruler":
        from segbench.accuracy.ruler_config import RULER_TASKS

        return tuple(RULER_TASKS)
    if benchmark == "longbench":
        from segbench.accuracy.longbench_config import LONGBENCH_DATASETS

        return tuple(LONGBENCH_DATASETS)
    if benchmark == "longbench_e":
        from segbench.accuracy.longbench_config import LONGBENCH_E_DATASETS

        return tuple(LONGBENCH_E_DATASETS)
    return ("longbench_v2",)


def _resolve_tasks(spec: SuiteFile, where: str, base_dir: Path | None) -> SuiteFile:
    """Check task names; make data paths absolute, since cells may run from another directory."""
    resolved = []
    for i, ts in enumerate(spec.tasks):
        known = task_names(ts.benchmark)
        for name in ts.names:
            if name not in known:
                raise UserError(f"{where}: tasks[{i}].names: unknown {ts.benchmark} task {name!r}"
                                f"{did_you_mean(name, known)}")
        paths = {}
        for key in ("data_dir", "haystack"):
            value = getattr(ts, key)
            if value is not None:
                p = Path(value).expanduser()
                if not p.is_absolute() and base_dir is not None:
                    p = (base_dir / p).resolve()
                paths[key] = str(p)
        resolved.append(dataclasses.replace(ts, **paths))
    if not spec.latency and not resolved:
        raise UserError(f"{where}: latency is false and there are no tasks: nothing to run")
    return dataclasses.replace(spec, tasks=tuple(resolved))


def _check_spec(spec: SuiteFile, where: str) -> None:
    if not spec.contexts:
        raise UserError(f"{where}: contexts is empty; list at least one prompt length, e.g. [4096]")
    if not spec.methods:
        raise UserError(f"{where}: methods is empty; add e.g. `- method: full`")
    for c in spec.contexts:
        if c < 1:
            raise UserError(f"{where}: contexts: {c} is not a positive token count")
        if c > MAX_CONTEXT:
            raise UserError(f"{where}: contexts: {c} is beyond any model ({MAX_CONTEXT} tokens at most)")
    per_entry = len(spec.contexts) * (spec.workload.process_repeats if spec.latency else 0)
    per_entry += len(spec.contexts) * sum(len(ts.names) or len(task_names(ts.benchmark)) for ts in spec.tasks)
    if len(spec.methods) * per_entry > MAX_CELLS:
        raise UserError(f"{where}: the suite would expand to more than {MAX_CELLS} cells; fewer contexts, "
                        f"methods or process_repeats")
    if len(set(spec.contexts)) != len(spec.contexts):
        raise UserError(f"{where}: contexts has duplicates: {list(spec.contexts)}")
    try:
        if not is_local_path(spec.model.name):
            preset_values(spec.model.name)  # raises with "did you mean"
        values = config_values(spec.model.name, spec.model.overrides)
    except UserError as e:
        raise UserError(f"{where}: model: {e}") from None
    limit = values.get("max_position_embeddings")
    longest = max(spec.contexts)
    if limit and longest > limit:
        raise UserError(
            f"{where}: context {longest} exceeds {spec.model.name}'s max_position_embeddings {limit}; "
            f"drop that context or set model.overrides.max_position_embeddings"
        )
    if spec.device == "cpu" and spec.dtype == "float16":
        raise UserError(f"{where}: float16 on cpu is not a useful measurement; use float32 or bfloat16")
    shape_of(spec.model.name, spec.model.overrides)


def parse_contexts(text: str) -> list[int]:
    """'1024,4k,8K' -> [1024, 4096, 8192]"""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1024 if part.endswith("k") else 1
        digits = part[:-1] if part.endswith("k") else part
        if not digits.isascii() or not digits.isdigit() or len(digits) > 10:
            raise UserError(f"--contexts: {part!r} is not a token count (e.g. 1024,4k,8192)")
        value = int(digits) * mult
        if not 0 < value <= MAX_CONTEXT:
            raise UserError(f"--contexts: {part!r} is not a positive token count up to {MAX_CONTEXT}")
        out.append(value)
    if not out:
        raise UserError("--contexts: give at least one length, e.g. --contexts 1024,4096")
    return out

