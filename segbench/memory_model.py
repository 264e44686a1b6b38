"""Analytic memory arithmetic shared by every method's `estimate`.

The numbers follow what a Hugging Face decoder layer allocates in inference (no autograd): the
residual stream and its normed copy stay alive through a layer; inside it the MLP is the peak
(gate, up and act(gate) at once: 3 x intermediate per token), larger than attention's q/k/v and
their rotated copies for every shape we ship. Logits are one position (logits_to_keep=1).

`decoder_layer_peak_bytes` is the per-token working set measured on the CPU miniature (tiny Llama,
fp32, one-shot prefill at 8K/16K/32K: 3154 elements per token, all three within 0.1%), written
as 4h + kv + max(attention, 3i): the residual stream, its normed copy, the attention output and
the sum it is added into (4h), the layer's own k/v in flight, then the larger of attention's
q/rotated q/output and the MLP's three [tokens x intermediate] tensors. The older
`layer_activation_bytes` (2h + ...) under-counted it by 18%; it stays for the adapters that still
call it.
"""

from __future__ import annotations

from segbench.models import ModelShape


def weights_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    return shape.param_count() * dtype_bytes


def kv_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, layers: int | None = None) -> int:
    """Keys and values of `tokens` tokens in `layers` layers (all by default)."""
    n_layers = shape.num_layers if layers is None else layers
    return 2 * n_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes * tokens


def layer_activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    """Peak working set of one decoder layer over `tokens` query tokens, KV excluded."""
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim
    attention = 3 * q + 3 * kv  # q and its rotated copy, the attention output; k, v, rotated k
    mlp = 3 * i
    return tokens * dtype_bytes * (2 * h + max(attention, mlp))


def decoder_layer_peak_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    """Peak working set of one decoder layer over `tokens` query tokens, stored KV excluded
    (calibrated on the CPU miniature, see the module docstring)."""
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim
    attention = 3 * q + 2 * kv  # q, its rotated copy, the attention output; rotated k, v
    return tokens * dtype_bytes * (4 * h + kv + max(attention, 3 * i))


def decoder_attention_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    """The same layer's working set while its attention runs (before the MLP): what is alive when
    an attention-time step (SnapKV's vote) adds scratch of its own."""
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim
    return tokens * dtype_bytes * (4 * shape.hidden_size + 3 * kv + 3 * q)


# Tokens of headroom each in-place cache layer allocates past what it must hold (segbench.hf).
DECODE_RESERVE = 256


def kv_reserve_bytes(shape: ModelShape, dtype_bytes: int, device: str, layers: int | None = None) -> int:
    """The decode headroom of the preallocated cache: allocated on a GPU; on CPU the pages stay
    untouched until decode writes them, so they are not in the peak RSS of prefill."""
    return 0 if device != "cuda" else kv_bytes(shape, DECODE_RESERVE, dtype_bytes, layers)


def logits_bytes(shape: ModelShape) -> int:
    return shape.vocab_size * 4  # one position, upcast to fp32 by some heads


def mask_bytes(query_tokens: int, key_tokens: int, dtype_bytes: int) -> int:
    """A boolean [q, k] mask (transformers builds one whenever a chunk attends to earlier KV) plus
    the additive copy in the query dtype that SDPA makes of it (measured: 32 MiB at 2048x4096 fp32)."""
    return query_tokens * key_tokens * (1 + dtype_bytes)


def expanded_kv_bytes(shape: ModelShape, key_tokens: int, dtype_bytes: int, device: str) -> int:
    """On CUDA a masked SDPA call needs K/V repeated to the query heads (one layer at a time)."""
    if device != "cuda" or shape.num_heads == shape.num_kv_heads:
        return 0
    return 2 * key_tokens * shape.num_heads * shape.head_dim * dtype_bytes
