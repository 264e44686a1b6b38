"""Model presets: real architecture shapes with random weights, or a local checkpoint.

A preset is a JSON file of published config values in `segbench/presets/`. Memory and latency do
not depend on weight values, so a random-weight Llama-3.1-8B is a faithful subject for them; it is
not for accuracy, which is why rows carry `model_trained`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from segbench.errors import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The numbers every analytic memory model needs, whatever the model family."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Keys and values of every layer for one token: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def param_count(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        mlp = 3 * h * i
        norms = 2 * h
        per_layer = attn + mlp + norms
        embed = v * h
        head = 0 if self.tie_word_embeddings else v * h
        return self.num_layers * per_layer + embed + head + h


def preset_names() -> list[str]:
    """Shape presets (random weights) and trained presets (shipped checkpoints)."""
    root = resources.files("segbench").joinpath("presets")
    shapes = [p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json")]
    trained_root = root.joinpath("trained")
    trained = [p.name for p in trained_root.iterdir() if p.joinpath("config.json").is_file()] if trained_root.is_dir() else []
    return sorted(shapes + trained)


@cache
def preset_values(name: str) -> dict:
    shipped = trained_preset_dir(name)
    if shipped is not None:
        return {"source": f"trained checkpoint shipped in {shipped.name} (segbench train)",
                **json.loads((shipped / "config.json").read_text())}
    path = resources.files("segbench").joinpath("presets", f"{name}.json")
    if not path.is_file():
        from segbench.errors import did_you_mean

        raise UserError(f"unknown model preset {name!r}{did_you_mean(name, preset_names())}; `segbench models` lists them")
    return json.loads(path.read_text())


def is_local_path(model: str) -> bool:
    return "/" in model or model.startswith(".") or Path(model).is_dir()


def trained_preset_dir(model: str) -> Path | None:
    """The shipped checkpoint folder of a trained preset (segbench/presets/trained/<name>), if any."""
    if is_local_path(model):
        return None
    path = Path(str(resources.files("segbench").joinpath("presets", "trained", model)))
    return path if (path / "config.json").is_file() else None


def resolve_model(model: str) -> str:
    """A trained preset's name becomes its shipped folder; anything else is left as given."""
    shipped = trained_preset_dir(model)
    return str(shipped) if shipped else model


def config_values(model: str, overrides: dict | None = None) -> dict:
    """Config values of a preset or a local checkpoint's config.json, with suite overrides applied.

    The values every memory model reads are checked here, so a broken config.json or a mistyped
    override is one line naming its key, not a TypeError inside a cell.
    """
    model = resolve_model(model)
    if is_local_path(model):
        cfg_path = Path(model) / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"model path {model!r} has no config.json; give a preset name or a local HF checkpoint folder")
        try:
            values = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) else type(e).__name__
            raise UserError(f"{cfg_path} is not a readable JSON config ({why}); point the model at a Hugging Face "
                            f"checkpoint folder") from None
        if not isinstance(values, dict):
            raise UserError(f"{cfg_path} is not a JSON object; point the model at a Hugging Face checkpoint folder")
        source = str(cfg_path)
    else:
        values = {k: v for k, v in preset_values(model).items() if k != "source"}
        source = f"preset {model!r}"
    if overrides is not None and not isinstance(overrides, dict):
        raise UserError("model.overrides: expected a mapping of config keys")
    values = dict(values)
    values.update(overrides or {})
    for key, value in values.items():
        where = f"model.overrides.{key}" if key in (overrides or {}) else f"{source}: {key}"
        _check_value(key, value, where)
    return values


# Config keys every memory model reads: positive integers, when present.
_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")
_REQUIRED = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_MAX_DIM = 2**31 - 1


def _check_value(key: str, value, where: str) -> None:
    if key in _INT_KEYS and value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_DIM:
            raise UserError(f"{where}: expected a positive integer up to {_MAX_DIM}, got {value!r}")
    elif key == "model_type" and not isinstance(value, str):
        raise UserError(f"{where}: expected a model type name (e.g. 'llama'), got {value!r}")
    elif not _finite(value):
        raise UserError(f"{where}: {value!r} holds a NaN or infinite number; give a finite value")


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def shape_of(model: str, overrides: dict | None = None) -> ModelShape:
    v = config_values(model, overrides)
    where = f"{resolve_model(model)}/config.json" if is_local_path(resolve_model(model)) else f"preset {model!r}"
    missing = [k for k in _REQUIRED if v.get(k) is None]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; add it there or in model.overrides")
    heads = v["num_attention_heads"]
    kv_heads = v.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise UserError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if not v.get("head_dim") and v["hidden_size"] % heads:
        raise UserError(f"{where}: hidden_size {v['hidden_size']} is not a multiple of num_attention_heads "
                        f"{heads}; set head_dim")
    return ModelShape(
        name=model,
        model_type=v["model_type"],
        vocab_size=v["vocab_size"],
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_layers=v["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=v.get("head_dim") or v["hidden_size"] // heads,
        max_position_embeddings=v.get("max_position_embeddings") or 0,
        tie_word_embeddings=bool(v.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama/Mistral only when the config says so.
        attention_bias=v["model_type"] == "qwen2" or bool(v.get("attention_bias", False)),
    )


def is_trained(model: str) -> bool:
    """A local checkpoint or a shipped trained preset has trained weights; shape presets are random."""
    return is_local_path(model) or trained_preset_dir(model) is not None


# --------------------------------------------------------------------------------------------
# Fast random weights: an 8B preset built on the GPU in seconds.
#
# Building with transformers' from_config allocates every parameter, runs torch's per-module
# reset_parameters (kaiming on each Linear) and then transformers' _init_weights over every module
# again: two full passes of many small init calls over 16 GB. Instead the parameters are created
# on the meta device (no memory, every init a no-op), then each is allocated once on the target
# device and filled by one normal_ call from a seeded generator there, with the values
# transformers' _init_weights would draw from (normal(0, initializer_range) for matrices and
# embeddings, ones for norm weights, zeros for biases). Buffers (RoPE inv_freq) are computed as
# usual during construction and moved. Weights are random, not zeros, and deterministic per
# (seed, device type).


class params_on_meta:
    """Context manager: every nn.Parameter registered inside lands on the meta device (buffers do not)."""

    def __enter__(self):
        import torch

        self._original = torch.nn.Module.register_parameter
        original = self._original

        def register_parameter(module, name, param):
            original(module, name, param)
            if param is not None and param.device.type != "meta":
                kwargs = param.__dict__
                module._parameters[name] = type(param)(param.to("meta"), **kwargs) if kwargs else \
                    torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

        torch.nn.Module.register_parameter = register_parameter
        return self

    def __exit__(self, *exc):
        import torch

        torch.nn.Module.register_parameter = self._original
        return False


def fill_random(model, device: str, seed: int, std: float) -> None:
    """Allocate every meta parameter of ``model`` on ``device`` and fill it (see above); move buffers."""
    import torch

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    done: dict[int, torch.nn.Parameter] = {}  # tied weights (lm_head = embed_tokens) stay one tensor
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in done:
                module._parameters[name] = done[id(param)]
                continue
            data = torch.empty(param.shape, dtype=param.dtype, device=dev)
            full = f"{module_name}.{name}"
            if name == "bias":
                data.zero_()
            elif data.dim() == 1 and "norm" in full.lower():
                data.fill_(1.0)
            else:
                data.normal_(0.0, std, generator=gen)
            new = torch.nn.Parameter(data, requires_grad=False)
            done[id(param)] = new
            module._parameters[name] = new
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                if buf.device.type == "meta":
                    raise RuntimeError(f"buffer {module_name}.{name} was built on the meta device")
                module._buffers[name] = buf.to(dev)
