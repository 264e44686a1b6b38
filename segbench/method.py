"""The one interface every method adapter implements, and the registry that finds them.

An adapter (one file in methods/) is a small class: typed `Params`, `prefill` and `decode` over a
Hugging Face causal LM, the number of KV bytes it stores, and an analytic memory model. It never
times or measures anything itself: the worker does that around it.

Third-party methods register through the entry-point group `segbench.methods` (an entry point
names a module to import; importing it runs its `@register_method`), or through a suite's
`plugins:` list (module names or .py files).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from segbench.errors import UserError, did_you_mean
from segbench.models import ModelShape
from segbench.typed import from_dict

LOWERS = ("peak_prefill", "stored_kv")


class Unsupported(Exception):
    """The method cannot run this model or context; the cell is recorded `unsupported`, not `error`."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Analytic memory of one cell, in bytes. Peak includes the weights, as the measurement does."""

    stored_kv_bytes: int
    peak_prefill_bytes: int
    weights_bytes: int

    @property
    def peak_over_weights_bytes(self) -> int:
        return self.peak_prefill_bytes - self.weights_bytes


@dataclass
class Generation:
    """What prefill returns: logits of the last position and the method's own decode state."""

    logits: torch.Tensor  # [B, vocab]
    state: Any
    next_position: int


@dataclass(frozen=True)
class NoParams:
    pass


class Method:
    """Base class of a method adapter. Subclasses set the ClassVars and implement the methods."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    lowers: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type] = NoParams
    # Why prefill(ids[:N]) + k decode steps may differ from prefill(ids[:N+k]) by design (e.g. the
    # cache is compressed after prefill); empty: the method promises they agree. The shared matrix
    # tests every method that does not declare a reason and lists those that do.
    consistency_exempt: ClassVar[str] = ""

    def __init__(self, params) -> None:
        self.params = params

    # --- what the shared test matrix calls
    @classmethod
    def reference_params(cls, total_tokens: int) -> dict:
        """Parameters under which this method must reproduce full attention exactly
        (e.g. a window or budget >= total_tokens = prompt + decode tokens)."""
        return {}

    @classmethod
    def small_params(cls) -> dict:
        """Parameters that exercise the method's real mechanism on a ~200-token prompt in tests."""
        return {}

    # --- what the harness calls
    def check(self, shape: ModelShape, context_len: int) -> None:
        """Raise Unsupported when this model or context cannot run. Default: anything goes."""

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        """Install hooks (attention functions) once, after the model is built."""

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        raise NotImplementedError

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        raise NotImplementedError

    def kv_cache_bytes(self, gen: Generation) -> int:
        raise NotImplementedError

    def attention_backend(self) -> str:
        return "sdpa"

    def estimate(self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda") -> MemoryEstimate:
        """Stored KV and peak prefill bytes of this method's implementation, by arithmetic alone."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Method]] = {}
_BUILTINS = ("full", "segmented", "longgen", "snapkv", "streamingllm")
_discovered = False


def register_method(name: str):
    """Class decorator: `@register_method("snapkv")`."""

    def wrap(cls: type[Method]) -> type[Method]:
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"{cls.__name__}.Params must be a frozen dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def discover() -> None:
    """Import the built-in adapters and every `segbench.methods` entry point, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in _BUILTINS:
        try:
            importlib.import_module(f"segbench.methods.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"segbench.methods.{mod}":
                raise
    from importlib.metadata import entry_points

    for ep in entry_points(group="segbench.methods"):
        ep.load()


def load_plugins(plugins: tuple[str, ...] | list[str], base_dir: Path | None = None) -> None:
    """Import plugin modules (dotted names or .py paths, relative to the suite file) so they register."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            if not path.is_file():
                raise UserError(f"plugin file {str(path)!r} does not exist")
            mod_name = f"segbench_plugin_{path.stem}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as e:
                raise UserError(f"plugin module {plugin!r} cannot be imported ({e})") from None


def method_names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    discover()
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}{did_you_mean(name, _REGISTRY)}; `segbench methods` lists them")
    return _REGISTRY[name]


def make_params(name: str, params: dict | None, where: str):
    return from_dict(method_class(name).Params, params or {}, where)


def make_method(name: str, params: dict | None, where: str = "params") -> Method:
    cls = method_class(name)
    return cls(make_params(name, params, where))
