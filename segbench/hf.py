"""Every call into transformers lives here, so one file pins and tests the supported range.

Methods hook into models only through what this module offers: attention functions registered
with transformers' AttentionInterface *and* AttentionMaskInterface, the Cache classes, and forward
keyword arguments. No model code is forked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import transformers
from packaging.version import Version

from segbench.errors import UserError
from segbench.models import config_values, fill_random, is_local_path, params_on_meta, resolve_model

SUPPORTED_TRANSFORMERS = (">=5.17", "<6")


def check_transformers_version() -> None:
    v = Version(transformers.__version__)
    if not (Version("5.17") <= v < Version("6")):
        raise UserError(
            f"transformers {transformers.__version__} is outside the supported range "
            f"{','.join(SUPPORTED_TRANSFORMERS)}; install e.g. `pip install 'transformers>=5.17,<6'`"
        )


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def flash_attn_version() -> str:
    try:
        import flash_attn  # noqa: F401

        return getattr(flash_attn, "__version__", "unknown")
    except Exception:
        return ""


def build_model(
    model: str,
    *,
    dtype: str,
    device: str,
    overrides: dict | None = None,
    seed: int = 0,
    attn_implementation: str = "segbench_sdpa",
) -> torch.nn.Module:
    """A preset with random weights built directly on `device`, or a local checkpoint.

    Random weights are allocated once, on the target device, and filled there from a generator seeded
    with ``seed`` (no host detour, no per-module init): an 8B preset builds in seconds on a GPU.
    """
    check_transformers_version()
    register_default_attention()
    torch_dtype = TORCH_DTYPES[dtype]
    model = resolve_model(model)
    if is_local_path(model):
        # Straight onto the device where accelerate can place it; else load, then move.
        placement = {"device_map": device} if _has_accelerate() else {}
        m = transformers.AutoModelForCausalLM.from_pretrained(
            model,
            dtype=torch_dtype,
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
            **placement,
        )
        if not placement:
            m.to(device)
        for k, v in (overrides or {}).items():
            setattr(m.config, k, v)
    else:
        values = config_values(model, overrides)
        model_type = values.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **values)
        # Parameters on meta during construction (no allocation, no per-module init), then one
        # seeded on-device fill each (segbench.models.fill_random): an 8B preset in seconds.
        with params_on_meta():
            m = transformers.AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=False
            )
        fill_random(m, device, seed, getattr(config, "initializer_range", None) or 0.02)
    m.eval()
    m.requires_grad_(False)
    return m


# --------------------------------------------------------------------------------------------
# Attention functions


def register_attention(name: str, fn: Callable, mask_fn: Callable | None = None) -> None:
    """Register an attention function under `name` together with its mask function.

    Without a mask function transformers passes attention_mask=None to a custom attention name,
    and chunked prefill silently loses its causal mask (max logit error 0.4 on a tiny Llama).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask_fn or sdpa_mask)


def set_attention(model: torch.nn.Module, name: str) -> None:
    model.set_attn_implementation(name)


class BackendLog:
    """Which SDPA kernel actually ran: the adapters' rows report it, not an assumption."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.used: set[str] = set()

    def add(self, name: str) -> None:
        with self._lock:
            self.used.add(name)

    def reset(self) -> None:
        with self._lock:
            self.used.clear()

    def summary(self) -> str:
        return "+".join(sorted(self.used)) or "none"


BACKENDS = BackendLog()

# PyTorch's own priority order; we walk it ourselves so that we know which one ran.
_SDPA_ORDER = ("flash", "efficient", "math")
_failed_once: dict[tuple, set[str]] = {}


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def sdpa_call(query, key, value, *, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention, trying PyTorch's backends in its own order and logging the winner."""
    from torch.nn.attention import sdpa_kernel

    signature = (query.device.type, query.dtype, attn_mask is None, is_causal, enable_gqa, query.shape[-1])
    failed = _failed_once.setdefault(signature, set())
    last_error: Exception | None = None
    for name in _SDPA_ORDER:
        if name in failed or (name == "efficient" and query.device.type != "cuda"):
            continue
        try:
            with sdpa_kernel([_sdpa_backend(name)]):
                out = torch.nn.functional.scaled_dot_product_attention(
                    query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
                )
            BACKENDS.add(f"sdpa:{name}")
            return out
        except RuntimeError as e:  # "No available kernel" for this backend and these inputs
            failed.add(name)
            last_error = e
    raise last_error  # type: ignore[misc]


def segbench_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract over `sdpa_call`: q/k/v [B, H, L, D] in, [B, L, H, D] out.

    The same decisions as transformers' own sdpa path (is_causal only without a mask and with
    more than one query; GQA without expanding K/V wherever the kernel allows it), so one-shot
    prefill reaches the flash kernel and chunked prefill gets its explicit mask.
    """
    q_len = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and key.shape[2] > q_len:  # only an empty static cache gets here; top-left alignment is then right
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    groups = query.shape[1] // key.shape[1]
    enable_gqa = groups > 1 and (attention_mask is None or query.device.type == "cpu")
    if groups > 1 and not enable_gqa:  # CUDA kernels with a mask need expanded K/V, as transformers does
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = sdpa_call(query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scaling, enable_gqa=enable_gqa)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def register_default_attention() -> None:
    global _registered
    if not _registered:
        register_attention("segbench_sdpa", segbench_sdpa_forward)
        _registered = True


def full_attention_implementation(device: str, dtype: str) -> tuple[str, str]:
    """(attn_implementation, backend label) for full attention: flash-attn where it can run, else SDPA."""
    if device == "cuda" and dtype in ("bfloat16", "float16") and flash_attn_version():
        return "flash_attention_2", "flash_attn"
    return "segbench_sdpa", "sdpa"


# --------------------------------------------------------------------------------------------
# Forward and cache


def new_cache(model: torch.nn.Module):
    return transformers.DynamicCache(config=model.config)


def forward_last_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache=None, **kwargs) -> torch.Tensor:
    """Logits of the last position only, [B, vocab].

    `logits_to_keep=1` keeps the LM head from materialising [B, L, vocab] (31 GiB in fp32 for
    Llama-3.1-8B at 128K). The older `num_logits_to_keep` is silently ignored by transformers 5.
    """
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=cache is not None, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :]


def cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a transformers Cache holds (keys and values of each layer)."""
    tensors = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                tensors.append(t)
    return tensors


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: torch.nn.Module) -> int:
    return tensor_bytes(list(model.parameters()) + list(model.buffers()))


def versions() -> dict:
    return {"transformers": transformers.__version__, "flash_attn": flash_attn_version()}


# --------------------------------------------------------------------------------------------
# Caches whose layers store different tokens (LongGen's compacted sparse layers)


class PositionedLayer(transformers.cache_utils.DynamicLayer):
    """A DynamicLayer that remembers the original position of every key it stores and can drop keys.

    `get_seq_length` counts every token the layer has *seen*, not the ones it still stores: the
    model derives the next position ids from it, so positions stay original after eviction (no
    renumbering). `get_mask_sizes` reports what is stored, which is what attention will see.
    """

    is_croppable = False  # cropping by count is meaningless once the middle of the sequence is gone

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.positions: torch.Tensor | None = None  # int64 [L_stored], ascending, on the keys' device
        self.seen = 0

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        new_L = torch.arange(self.seen, self.seen + key_states.shape[-2], device=key_states.device)
        self.positions = new_L if self.positions is None else torch.cat([self.positions, new_L])
        self.seen += key_states.shape[-2]
        return keys, values

    def keep(self, index_L: torch.Tensor) -> None:
        """Keep only the stored tokens at `index_L` (ascending indices into the stored sequence)."""
        self.keys = self.keys.index_select(-2, index_L)
        self.values = self.values.index_select(-2, index_L)
        self.positions = self.positions.index_select(0, index_L)

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = 0 if self.positions is None else self.positions.numel()
        return stored + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.positions, self.seen = None, 0


def new_positioned_cache(model: torch.nn.Module, positioned_layers) -> transformers.Cache:
    """The model's usual cache with `PositionedLayer`s at the given layer indices."""
    cache = new_cache(model)
    for i in positioned_layers:
        cache.layers[i] = PositionedLayer()
    return cache


# --------------------------------------------------------------------------------------------
# Helpers for methods that edit or re-rotate the KV cache (snapkv, streamingllm)


def no_mask(*args, **kwargs) -> None:
    """Mask function for attention functions that build their own mask from forward kwargs.

    Registered in place of `sdpa_mask` so transformers does not materialise a [q, k] boolean
    mask per forward that the attention function would ignore anyway.
    """
    return None


def uses_sliding_window(model: torch.nn.Module) -> bool:
    """Whether transformers would give any layer a sliding-window cache (e.g. Mistral v0.1, Qwen2 with
    use_sliding_window): methods that evict or re-rotate cached keys themselves do not compose with it."""
    return any(transformers.DynamicCache(config=model.config).is_sliding)


def rotary_cos_sin(
    model: torch.nn.Module, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own RoPE tables at `position_ids` [B, L]: (cos, sin), each [B, L, head_dim].

    The same module, hence the same values bit for bit, that the decoder layers use, including
    any rope scaling and its attention factor.
    """
    probe = torch.empty(0, dtype=dtype, device=position_ids.device)
    return model.model.rotary_emb(probe, position_ids)


def get_cache_layer(cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's stored keys and values, [B, Hkv, L, D] each."""
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def set_cache_layer(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Replace one layer's stored keys and values [B, Hkv, L', D] (after eviction or compaction).

    Only plain growing layers are edited: their `update` keeps concatenating onto whatever is
    stored, so a shorter cache simply continues; a sliding, static or positioned layer keeps
    bookkeeping of its own that a replacement would silently break.
    """
    layer = cache.layers[layer_idx]
    if type(layer) is not transformers.cache_utils.DynamicLayer:
        raise TypeError(f"cannot edit a {type(layer).__name__} in place; only a plain DynamicLayer")
    layer.keys, layer.values = keys, values
