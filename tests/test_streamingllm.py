"""StreamingLLM against hand-written references: the ring buffer's slots, eviction, bounded KV, in-place
decode, and the official token-by-token scheme rebuilt from the model's own submodules (both
`positions` modes), at float64 as the truth and float32 as the bar (tests/helpers.py)."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from segbench.methods import streamingllm
from segbench.methods.full import Full, FullParams
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from segbench import hf, kv
from segbench.method import make_method
from segbench.models import shape_of

from .helpers import assert_within, rope_truth

PRESET = "tiny-llama"  # 8 query heads, 2 KV heads, head_dim 32, 4 layers


def _model(dtype: torch.dtype = torch.float32):
    return _build(dtype)  # one cache key per dtype, however it is called


@cache
def _build(dtype: torch.dtype):
    return hf.build_model(PRESET, dtype="float32", device="cpu", seed=0).to(dtype)


def _ids(length: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, 4096, (1, length), generator=torch.Generator().manual_seed(seed))


def kept_kv(method, gen) -> list[torch.Tensor]:
    """Per layer, keys then values the next token will see, in position order [B, Hkv, K, D]."""
    if method.name != "streamingllm":
        return [t.clone() for t in hf.cache_tensors(gen.state)]
    slots = streamingllm.slot_of(method.kept_positions(gen), method.params.sinks, method.params.window)
    return [t[:, :, slots].clone() for layer in gen.state.layers for t in (layer.k, layer.v)]


def run(params: dict, ids: torch.Tensor, decode: int = 0, name: str = "streamingllm", dtype=torch.float32):
    """(logits after prefill and each decode step [1 + decode, V], kept K/V after prefill, method)."""
    model = _model(dtype)
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        kept = kept_kv(method, gen)
        logits = [gen.logits[0]]
        for _ in range(decode):
            gen = method.decode(model, gen.logits.argmax(-1, keepdim=True), gen)
            logits.append(gen.logits[0])
    return torch.stack(logits), kept, method


@cache
def _rope_tables(dtype: torch.dtype = torch.float32, up_to: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    # Once: on a busy 2-core machine each small rotary_emb call costs milliseconds.
    return _model(dtype).model.rotary_emb(torch.empty(0, dtype=dtype), torch.arange(up_to)[None])


def rope_reference(x_HLD: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """transformers' own rotation of x [H, L, D] at `positions` [L]: the model's rotary tables
    through transformers' apply_rotary_pos_emb."""
    cos, sin = (t[:, positions] for t in _rope_tables(x_HLD.dtype))
    rotated, _ = apply_rotary_pos_emb(x_HLD[None], x_HLD[None], cos, sin)
    return rotated[0]


def forward_token_by_hand(model, token_id: int, attend) -> torch.Tensor:
    """One token through a Llama-family decoder, by hand from its submodules: logits [V].

    `attend(layer_idx, q_HD, k_KD, v_KD)` gets the token's unrotated query, key and value and
    returns the attention output [H, D]: the reference decides which keys, at which positions.
    """
    cfg = model.config
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    h = model.model.embed_tokens(torch.tensor([token_id]))[0]
    for i, layer in enumerate(model.model.layers):
        x = layer.input_layernorm(h)
        a = layer.self_attn
        out_HD = attend(
            i, a.q_proj(x).view(heads, dim), a.k_proj(x).view(kv_heads, dim), a.v_proj(x).view(kv_heads, dim)
        )
        h = h + a.o_proj(out_HD.reshape(-1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(model.model.norm(h))


def attention_by_hand(q_HD: torch.Tensor, k_KLD: torch.Tensor, v_KLD: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v per query head, query head h reading KV head h // G: [H, D]."""
    heads, groups = q_HD.shape[0], q_HD.shape[0] // k_KLD.shape[0]
    out = []
    for h in range(heads):
        k, v = k_KLD[h // groups], v_KLD[h // groups]
        weights = torch.softmax((k @ q_HD[h]) / q_HD.shape[-1] ** 0.5, dim=0)
        out.append(weights @ v)
    return torch.stack(out)


def official_streaming(
    ids: torch.Tensor, sinks: int, window: int, positions: str, decode: int, dtype=torch.float32
) -> torch.Tensor:
    """The official evaluation: token by token, keys cached before RoPE, evicted to sinks + window
    after each token; keys rotated at their cache slot and the query at its own (`cache`), or both
    at their original positions (`original`). Greedy decode continues the same way."""
    model = _model(dtype)
    stored = [[] for _ in model.model.layers]  # per layer: (position, k_KD, v_KD), cache order
    logits, tokens = [], ids[0].tolist()
    for t in range(ids.shape[1] + decode):
        token = tokens[t] if t < ids.shape[1] else int(logits[-1].argmax())

        def attend(i, q_HD, k_KD, v_KD, t=t):
            stored[i].append((t, k_KD, v_KD))
            pos = torch.tensor([p for p, _, _ in stored[i]])
            slots = torch.arange(len(stored[i])) if positions == "cache" else pos
            k_KLD = rope_reference(torch.stack([k for _, k, _ in stored[i]], dim=1), slots)
            q_HD = rope_reference(q_HD[:, None], slots[-1:])[:, 0]
            out = attention_by_hand(q_HD, k_KLD, torch.stack([v for _, _, v in stored[i]], dim=1))
            if len(stored[i]) > sinks + window:
                stored[i] = stored[i][:sinks] + stored[i][-window:]
            return out

        with torch.inference_mode():
            logits.append(forward_token_by_hand(model, token, attend))
    return torch.stack(logits[ids.shape[1] - 1 :])


# --------------------------------------------------------------------------------------------


def test_rerotation_equals_reference_rotation():
    torch.manual_seed(0)
    k_pre_HLD = torch.randn(2, 6, 32)
    for p in (0, 3, 4, 1000):
        slots = torch.full((6,), p)
        cos, sin = hf.rotary_cos_sin(_model(), slots[None], torch.float32)
        # Same float32 tables, same formula, but op order and fused multiply-adds may differ between
        # builds and CPUs: bit equality is not owed, 2x transformers' float32 error against float64 is.
        assert_within(
            kv.rope_rotate(k_pre_HLD, cos[:, None], sin[:, None])[0],
            rope_truth(_model(), k_pre_HLD, slots),
            rope_reference(k_pre_HLD, slots),
            f"slot {p}",
        )


def test_ring_slots_by_hand():
    # sinks 2, window 3: a ring of 4 slots (2..5) after the sinks.
    slots = streamingllm.slot_of(torch.arange(12), sinks=2, window=3)
    assert slots.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3]
    assert streamingllm.cached_positions(4, 2, 3).tolist() == [0, 1, 2, 3]
    assert streamingllm.cached_positions(6, 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert streamingllm.cached_positions(9, 2, 3).tolist() == [0, 1, 6, 7, 8, 5]  # 5 is stale: 9 sees 6..8
    for seen in range(1, 40):  # every held position sits in its own slot
        held = streamingllm.cached_positions(seen, 2, 3)
        assert torch.equal(streamingllm.slot_of(held, 2, 3), torch.arange(held.numel()))
        assert set(kv.sink_window_positions(seen, 2, 3).tolist()) <= set(held.tolist())


@pytest.mark.parametrize("positions", ["cache", "original"])
def test_eviction_keeps_sinks_and_last_window(positions):
    # Layer-0 keys depend on the token alone, so full attention's layer-0 keys are the truth; both
    # modes cache the keys rotated at their original positions (`cache` corrects only the sinks'
    # distance, in the query).
    sinks, window, length = 4, 16, 70
    ids = _ids(length)
    _, kept, method = run({"sinks": sinks, "window": window, "chunk_size": 12, "positions": positions}, ids)
    _, full, _ = run({}, ids, name="full")
    _, full64, _ = run({}, ids, name="full", dtype=torch.float64)
    expected = torch.cat([torch.arange(sinks), torch.arange(length - window, length)])
    assert torch.equal(kv.sink_window_positions(length, sinks, window), expected)
    assert kept[0].shape == (1, 2, sinks + window, 32)
    for got, base, truth in zip(kept[:2], full[:2], full64[:2], strict=True):
        assert_within(got, truth[:, :, expected], base[:, :, expected], f"{positions} layer-0 kept K/V")


def _spy_attention(monkeypatch):
    """Record every attention call's key length and mask shape (SDPA and the log-sum-exp calls)."""
    calls = []
    plain_sdpa, plain_lse = streamingllm.hf.segbench_sdpa_forward, streamingllm.attention_lse

    def sdpa(module, query, key, value, attention_mask, **kwargs):
        calls.append(("sdpa", query.shape[2], key.shape[2], attention_mask, key))
        return plain_sdpa(module, query, key, value, attention_mask, **kwargs)

    def lse(q, k, v, bias, causal, scale):
        calls.append(("lse", q.shape[2], k.shape[2], bias, k))
        return plain_lse(q, k, v, bias, causal, scale)

    monkeypatch.setattr(streamingllm.hf, "segbench_sdpa_forward", sdpa)
    monkeypatch.setattr(streamingllm, "attention_lse", lse)
    return calls


@pytest.mark.parametrize("positions", ["cache", "original"])
def test_kv_and_masks_are_bounded_and_decode_is_in_place(monkeypatch, positions):
    sinks, window, chunk, length = 4, 16, 10, 55
    calls = _spy_attention(monkeypatch)
    params = {"sinks": sinks, "window": window, "chunk_size": chunk, "positions": positions}
    _, kept, method = run(params, _ids(length), decode=3)
    assert max(k for _, _, k, _, _ in calls) <= sinks + window + 1
    masks = [m for _, _, _, m, _ in calls if m is not None]
    assert masks and all(m.shape[-2] <= chunk and m.shape[-1] <= sinks + window + 1 for m in masks)
    decode = [c for c in calls if c[1] == 1][-3 * 4 :]  # 3 steps x 4 layers
    assert all(kind == "sdpa" and mask is None for kind, _, _, mask, _ in decode)  # one unmasked call
    # Every decode call of a layer reads the same buffer: written in place, never re-allocated.
    assert len({k.untyped_storage().data_ptr() for *_, k in decode[0::4]}) == 1
    est = method.estimate(shape_of(PRESET), length, 4, "cpu")
    model = _model()
    with torch.inference_mode():
        gen = method.prefill(model, _ids(length))
    assert method.kv_cache_bytes(gen) == est.stored_kv_bytes
    sink_copy = shape_of(PRESET).kv_bytes_per_token(4) * sinks // 2 if positions == "cache" else 0
    assert est.stored_kv_bytes == shape_of(PRESET).kv_bytes_per_token(4) * (sinks + window + 1) + sink_copy


@pytest.mark.parametrize("positions", ["cache", "original"])
def test_matches_the_official_scheme_at_any_chunk_size(positions):
    sinks, window, length, decode = 4, 8, 28, 3
    ids = _ids(length)
    truth = official_streaming(ids, sinks, window, positions, decode, dtype=torch.float64)
    base = official_streaming(ids, sinks, window, positions, decode)
    for chunk in (1, 5, 16):  # 16 is clamped to the window
        params = {"sinks": sinks, "window": window, "chunk_size": chunk, "positions": positions}
        got, _, _ = run(params, ids, decode)
        assert_within(got, truth, base, f"chunk {chunk}")


@pytest.mark.parametrize("positions", ["cache", "original"])
def test_no_eviction_is_full_attention_when_chunked(positions):
    ids = _ids(50)
    full, _, _ = run({}, ids, decode=3, name="full")
    full64, _, _ = run({}, ids, decode=3, name="full", dtype=torch.float64)
    got, _, _ = run({"window": 60, "chunk_size": 16, "positions": positions}, ids, decode=3)
    assert_within(got, full64, full, positions)


def test_estimate_bounds_peak_below_full_at_long_context():
    shape = shape_of(PRESET)
    for positions in ("cache", "original"):
        est = make_method("streamingllm", {"positions": positions}).estimate(shape, 32768, 2, "cuda")
        full = Full(FullParams()).estimate(shape, 32768, 2, "cuda")
        sink_copy = shape.kv_bytes_per_token(2) * 4 // 2 if positions == "cache" else 0
        assert est.stored_kv_bytes == shape.kv_bytes_per_token(2) * 2049 + sink_copy
        assert est.peak_over_weights_bytes < full.peak_over_weights_bytes / 4
