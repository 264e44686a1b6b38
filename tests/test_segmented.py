"""Segmented execution against small hand-computed references (the shared matrix covers the rest).

References are built from transformers' own RoPE (`apply_rotary_pos_emb`, `model.model.rotary_emb`)
and plain softmax attention, never from the adapter's helpers.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from functools import cache

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from segbench import hf, segments
from segbench.errors import UserError
from segbench.method import Unsupported, make_method
from segbench.models import shape_of
from segbench.segments import Rope, select_blocks

from .conftest import TINY_PRESETS
from .helpers import assert_within, max_error, rope_truth

PRESET = "tiny-llama"  # 4 layers, 8 query / 2 KV heads, head_dim 32


@cache
def _model():
    return hf.build_model(PRESET, dtype="float32", device="cpu", seed=0)


@cache
def _model64():
    return hf.build_model(PRESET, dtype="float32", device="cpu", seed=0).double()


def _rope_ref(x_BHLD: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x rotated at `positions` exactly as the model's attention rotates its keys."""
    cos, sin = _model().model.rotary_emb(x_BHLD, positions[None])
    return apply_rotary_pos_emb(x_BHLD, x_BHLD, cos, sin)[1]


def _attention_ref(q_BHLD, k_BKLD, v_BKLD, visible_LK: torch.Tensor) -> torch.Tensor:
    group = q_BHLD.shape[1] // k_BKLD.shape[1]
    k, v = k_BKLD.repeat_interleave(group, 1), v_BKLD.repeat_interleave(group, 1)
    scores = (q_BHLD @ k.transpose(-1, -2)) * q_BHLD.shape[-1] ** -0.5
    return scores.masked_fill(~visible_LK, float("-inf")).softmax(-1) @ v


class _Attn:
    """Stands in for a decoder layer's attention module (what the attention function reads of it)."""

    layer_idx, is_causal = 0, True


# --------------------------------------------------------------------------------------------
# Which layers, which blocks


def test_auto_long_range_layers_scale_the_papers_choice():
    assert segments.scale_layers(32) == (6, 8, 11, 18)
    assert segments.scale_layers(28) == (5, 7, 10, 16)
    assert segments.scale_layers(4) == (1, 2)
    assert segments.scale_layers(1) == (0,)


def test_block_scores_mean_over_the_group_and_max_over_the_block():
    # One KV head read by two query heads; pool of three blocks of two tokens; scale 1.
    q_BHD = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k_BKLD = torch.tensor([[[[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]]]])
    # Head a: softmax of logits (0,0,3,0,0,0) -> token 2: e^3/(e^3+5) = .801, others 1/(e^3+5) = .040.
    # Head b: logits (0,0,0,0,1,1) -> tokens 4,5: e/(2e+4) = .288, others 1/(2e+4) = .106.
    # Group mean per token: .073 .073 | .453 .073 | .164 .164 -> block maxima .073, .453, .164.
    assert select_blocks(q_BHD, k_BKLD, block=2, topk=1, scale=1.0).tolist() == [[[1]]]
    assert select_blocks(q_BHD, k_BKLD, block=2, topk=2, scale=1.0).tolist() == [[[1, 2]]]  # ascending
    assert select_blocks(q_BHD, k_BKLD, block=2, topk=9, scale=1.0).tolist() == [[[0, 1, 2]]]  # k clipped


def test_a_needle_block_beats_a_uniformly_warm_one():
    # Block 0 holds one token at logit 4 and one at -4, block 1 two tokens at 3.5: by the mean block 1
    # would win ((e^4 + e^-4)/2 = 27.3 < e^3.5 = 33.1); by the max (54.6 > 33.1) the needle does.
    q_BHD = torch.tensor([[[1.0, 0.0]]])
    k_BKLD = torch.tensor([[[[4.0, 0.0], [-4.0, 0.0], [3.5, 0.0], [3.5, 0.0]]]])
    assert select_blocks(q_BHD, k_BKLD, block=2, topk=1, scale=1.0).tolist() == [[[0]]]


def test_each_kv_head_picks_its_own_blocks():
    # Two KV heads, one query head each; head 0's query points at block 2, head 1's at block 0.
    q_BHD = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k_BKLD = torch.zeros(1, 2, 6, 2)
    k_BKLD[0, 0, 4] = torch.tensor([5.0, 0.0])
    k_BKLD[0, 1, 1] = torch.tensor([0.0, 5.0])
    assert select_blocks(q_BHD, k_BKLD, block=2, topk=1, scale=1.0).tolist() == [[[2], [0]]]


# --------------------------------------------------------------------------------------------
# RoPE bookkeeping and the renumbered window


def test_rope_unrotate_and_shift_invert_the_models_rotation():
    """Each of Rope's float32 rotations is within 2x of transformers' plain float32 rotation's error
    against the float64 truth (tests/helpers.py), not within an absolute constant."""
    g = torch.Generator().manual_seed(0)
    model, rope = _model(), Rope(_model())
    k_pre = torch.randn(1, 2, 5, 32, generator=g)
    at = torch.arange(7, 12)
    rotated = _rope_ref(k_pre, at)
    assert_within(rope.rotate(k_pre, 7), rope_truth(model, k_pre, at), rotated, "rotate")
    # unrotate and shift start from the float32 `rotated`; plain float32 does the same by rotating
    # it at -p (resp. by -20) with transformers' tables.
    assert_within(rope.unrotate(rotated, 7), rope_truth(model, rotated, -at), _rope_ref(rotated, -at), "unrotate")
    by = torch.full((5,), -20)
    assert_within(rope.shift(rotated, -20), rope_truth(model, rotated, by), _rope_ref(rotated, by), "shift")


@pytest.mark.parametrize("tail", [0, 4])
def test_prefix_is_chosen_by_the_previous_segments_last_query_and_renumbered(tail):
    """Segment 1 retrieves nothing (no segment closed before it opened); its close picks, with its
    last query, the blocks segment 2 sees, and segment 2's own queries play no part in the choice.
    Long-range heads see [picked blocks; tail; segment] at positions 0..V+S-1."""
    g = torch.Generator().manual_seed(1)
    block, seg_len, n_blocks, dim = 4, 8, 5, 32
    params = make_method("segmented", {"segment": seg_len, "block": block, "topk": 2, "tail": tail}).params
    state = _one_layer_state(params, lr_heads=[0, 1])
    q1, q2 = torch.randn(1, 8, seg_len, dim, generator=g), torch.randn(1, 8, seg_len, dim, generator=g)
    k1, k2 = torch.randn(1, 2, seg_len, dim, generator=g), torch.randn(1, 2, seg_len, dim, generator=g)
    v1, v2 = torch.randn(1, 2, seg_len, dim, generator=g), torch.randn(1, 2, seg_len, dim, generator=g)
    k_pool, v_pool = torch.randn(1, 2, n_blocks * block, dim, generator=g), torch.randn(1, 2, n_blocks * block, dim, generator=g)
    # Segment 1's last query of KV head 0's group points at blocks 1 and 3, head 1's at 0 and 4;
    # segment 2's last query points elsewhere (block 2), which must not matter.
    picks = {0: (1, 3), 1: (0, 4)}
    for head, chosen in picks.items():
        for b in chosen:
            k_pool[0, head, b * block + 2] = 4 * q1[0, head * 4 : head * 4 + 4, -1].mean(0)
        k_pool[0, head, 2 * block + 1] = 8 * q2[0, head * 4 : head * 4 + 4, -1].mean(0)
    state.layers[0].pool.append(k_pool, v_pool)
    positions = torch.arange(seg_len)
    out1 = state.layers[0].attend(_Attn(), _rope_ref(q1, positions), _rope_ref(k1, positions), v1, dim**-0.5, state)
    causal = positions[None, :] <= positions[:, None]
    want1 = _attention_ref(_rope_ref(q1, positions), _rope_ref(k1, positions), v1, causal)
    truth1 = _attention_ref(rope_truth(_model(), q1, positions), rope_truth(_model(), k1, positions), v1.double(), causal)
    assert_within(out1.transpose(1, 2), truth1, want1, "segment 1")  # nothing visible
    out2 = state.layers[0].attend(_Attn(), _rope_ref(q2, positions), _rope_ref(k2, positions), v2, dim**-0.5, state)

    for head, chosen in picks.items():
        tokens = torch.cat([torch.arange(b * block, (b + 1) * block) for b in chosen])
        hs = slice(head, head + 1)
        k_win = torch.cat([k_pool[:, hs, tokens], k1[:, hs, seg_len - tail :], k2[:, hs]], dim=2)
        v_win = torch.cat([v_pool[:, hs, tokens], v1[:, hs, seg_len - tail :], v2[:, hs]], dim=2)
        n_vis = len(tokens) + tail
        window = torch.arange(n_vis + seg_len)
        visible = window[None, :] <= window[n_vis:, None]
        q_group = q2[:, head * 4 : head * 4 + 4]
        want = _attention_ref(_rope_ref(q_group, window[n_vis:]), _rope_ref(k_win, window), v_win, visible)
        truth = _attention_ref(rope_truth(_model(), q_group, window[n_vis:]), rope_truth(_model(), k_win, window), v_win.double(), visible)
        assert_within(out2[:, :, head * 4 : head * 4 + 4].transpose(1, 2), truth, want, f"segment 2, KV head {head}")
    # Both segments closed into the pool, pre-RoPE: un-rotated from what the model rotated, as
    # plain float32 would by rotating back at -p.
    assert state.layers[0].pool.length == n_blocks * block + 2 * seg_len
    unrotated = _rope_ref(_rope_ref(k2, positions), -positions)
    assert_within(state.layers[0].pool.filled()[0][:, :, -seg_len:], k2, unrotated, "pool keys")


def test_blocks_inside_the_long_range_tail_are_not_candidates():
    """With a tail the just-closed segment's last blocks are already visible: never retrieved twice."""
    g = torch.Generator().manual_seed(6)
    block, seg_len, dim = 4, 8, 32
    params = make_method("segmented", {"segment": seg_len, "block": block, "topk": 1, "tail": 4}).params
    state = _one_layer_state(params, lr_heads=[0, 1])
    q1, k1, v1 = torch.randn(1, 8, seg_len, dim, generator=g), torch.randn(1, 2, seg_len, dim, generator=g), torch.randn(1, 2, seg_len, dim, generator=g)
    k1[0, :, 6] = 10 * q1[0, :, -1].view(2, 4, dim).mean(1)  # the tail's block would win by far
    positions = torch.arange(seg_len)
    state.layers[0].attend(_Attn(), _rope_ref(q1, positions), _rope_ref(k1, positions), v1, dim**-0.5, state)
    group = state.layers[0].lr_group
    assert group.prefix_k.shape[2] == block and group.tail_k.shape[2] == 4
    assert torch.equal(group.prefix_v, v1[:, :, :block])  # block 0, the only candidate: values are copied, not computed


def _one_layer_state(params, lr_heads):
    return segments.SegmentedState(params, Rope(_model()), [segments.LayerKV(2, lr_heads, "cpu")], segments.window_attention)


def _window_mask_attention(segment: int, tail: int, lr_layers, lr_heads):
    """The whole sequence in one forward at absolute positions, each head masked to what segmented
    execution shows it: long-range heads that retrieve every block see all earlier tokens, local
    heads their segment plus the `tail` tokens before it. RoPE is relative, so absolute positions
    give the renumbered windows' results."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        length, group = query.shape[2], query.shape[1] // key.shape[1]
        i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
        causal = j <= i
        local = causal & (j >= (i // segment) * segment - tail)
        masks = [causal if module.layer_idx in lr_layers and h in lr_heads else local for h in range(key.shape[1])]
        mask_HLL = torch.stack(masks).repeat_interleave(group, 0)
        return _attention_ref(query, key, value, mask_HLL[None]).transpose(1, 2).contiguous(), None

    return attention


@pytest.mark.parametrize("lr_heads, lr_tail", [([0], True), ("all", True), ("all", False)])
def test_generation_equals_full_model_under_the_segment_masks(lr_heads, lr_tail):
    """Prefill + decode through 4 segment closes (tail carried, every candidate block retrieved) vs
    a one-shot reference with per-head window masks, at every step. With all blocks retrieved a
    long-range head sees every earlier token, whether the tail or the pool shows it."""
    segment, tail = 48, 16
    params = {"segment": segment, "tail": tail, "topk": 32, "block": 8, "long_range_layers": [1],
              "long_range_heads": lr_heads, "long_range_tail": lr_tail}
    model = _model()
    ids = torch.randint(3, 4096, (1, 150), generator=torch.Generator().manual_seed(2))
    method = make_method("segmented", params)
    method.setup(model, device="cpu", dtype="float32")
    got, tokens = [], ids
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        for _ in range(4):  # 150 + 3 decode tokens: the fourth segment closes at 144, a fifth opens
            got.append(gen.logits)
            token = gen.logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, token], dim=1)
            gen = method.decode(model, token, gen)
        got.append(gen.logits)
        heads = [0, 1] if lr_heads == "all" else lr_heads
        hf.register_attention("test_segment_masks", _window_mask_attention(segment, tail, [1], heads), hf.no_mask)
        # The masked one-shot reference in plain float32 sets the bar; the same at float64 is the truth.
        want, truth = [], []
        for reference, out in ((model, want), (_model64(), truth)):
            hf.set_attention(reference, "test_segment_masks")
            out += [hf.forward_last_logits(reference, tokens[:, :n]) for n in range(150, 155)]
    for step, (a, w, t) in enumerate(zip(got, want, truth, strict=True)):
        assert_within(a, t, w, f"step {step}")


# --------------------------------------------------------------------------------------------
# Invariants on every tiny family: causality, prefill == decode, degenerate == full.
# Tolerance: 2x the error plain fp32 full attention makes against fp64 on the same input, plus a
# floor of 1e-6 of the magnitude; never an absolute constant.

PROMPT = 200
SMALL = {"segment": 32, "tail": 16, "topk": 2, "block": 8}
SMALL_VARIANTS = {
    "mixed-heads": {**SMALL, "long_range_layers": [1, 2], "long_range_heads": [0]},
    "all-heads-no-tail": {**SMALL, "long_range_layers": [1], "long_range_heads": "all", "long_range_tail": False},
}


@cache
def _family(preset: str, dtype: str = "float32"):
    model = hf.build_model(preset, dtype="float32", device="cpu", seed=0)
    return model.double() if dtype == "float64" else model


def _ids(preset: str, n: int = PROMPT + 8) -> torch.Tensor:
    return torch.randint(3, shape_of(preset).vocab_size, (1, n), generator=torch.Generator().manual_seed(7))


def _prefill_hidden(method, model, ids) -> torch.Tensor:
    """Final hidden states [L, H] at every position of the adapter's prefill (a hook on the final norm)."""
    outs = []
    hook = model.model.norm.register_forward_hook(lambda mod, args, out: outs.append(out[0].double()))
    try:
        with torch.inference_mode():
            method.prefill(model, ids)
    finally:
        hook.remove()
    return torch.cat(outs, dim=0)


def _setup(name: str, params: dict, model):
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    return method


@cache
def _hidden_bar(preset: str) -> tuple[float, float]:
    """(max |fp32 - fp64| of full attention's final hidden states, their magnitude) on the prompt."""
    ids = _ids(preset)[:, :PROMPT]
    h32 = _prefill_hidden(_setup("full", {}, _family(preset)), _family(preset), ids)
    h64 = _prefill_hidden(_setup("full", {}, _family(preset, "float64")), _family(preset, "float64"), ids)
    return (h32 - h64).abs().max().item(), h64.abs().max().item()


# Prefill 188, decode 8: the lengths checked lie before, at (192) and after the segment close.
START, STEPS, CHECKED = 188, 8, (188, 191, 192, 193, 196)


@cache
def _logit_bar(preset: str) -> tuple[float, float]:
    """(max |fp32 - fp64| of full attention's last logits over the CHECKED prefill lengths, magnitude)."""
    ids = _ids(preset)
    errs, mags = [], []
    for n in CHECKED:
        with torch.inference_mode():
            a = _setup("full", {}, _family(preset)).prefill(_family(preset), ids[:, :n]).logits.double()
            b = _setup("full", {}, _family(preset, "float64")).prefill(_family(preset, "float64"), ids[:, :n]).logits
        errs.append((a - b).abs().max().item())
        mags.append(b.abs().max().item())
    return max(errs), max(mags)


@pytest.mark.parametrize("variant", sorted(SMALL_VARIANTS))
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_appending_tokens_never_changes_an_earlier_position(preset, variant):
    """Causality, within a segment (cut at 197 and 200: segment 192..223) and across segments
    (cut at 150, at 128 = a boundary, at 100): the hidden state at p depends on tokens <= p only."""
    bar, scale = _hidden_bar(preset)  # first: it sets the shared model to full attention
    model = _family(preset)
    method = _setup("segmented", SMALL_VARIANTS[variant], model)
    ids = _ids(preset)[:, :PROMPT]
    whole = _prefill_hidden(method, model, ids)
    for cut in (197, 150, 128, 100):
        part = _prefill_hidden(method, model, ids[:, :cut])
        err = (part - whole[:cut]).abs().max().item()
        assert err <= 2 * bar + 1e-6 * scale, f"cut {cut}: {err:.2e} vs fp32 full {bar:.2e}"


@pytest.mark.parametrize("variant", sorted(SMALL_VARIANTS))
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_prefill_then_decode_equals_a_longer_prefill(preset, variant):
    """prefill(N) + k decode steps == prefill(N + k), N = 188: k = 0..8 crosses the close at 192."""
    bar, scale = _logit_bar(preset)
    model = _family(preset)
    params = SMALL_VARIANTS[variant]
    ids = _ids(preset)
    decoded = _decoded_logits("segmented", params, model, ids)
    method = _setup("segmented", params, model)
    with torch.inference_mode():
        prefilled = {n: method.prefill(model, ids[:, :n]).logits for n in CHECKED}
    for n, want in prefilled.items():
        err = (decoded[n] - want).abs().max().item()
        assert err <= 2 * bar + 1e-6 * scale, f"length {n}: {err:.2e} vs fp32 full {bar:.2e}"


def _decoded_logits(name: str, params: dict, model, ids) -> dict[int, torch.Tensor]:
    """Last logits after prefill(START) and after each of STEPS teacher-forced decode steps, by length."""
    method = _setup(name, params, model)
    with torch.inference_mode():
        gen = method.prefill(model, ids[:, :START])
        out = {START: gen.logits}
        for j in range(STEPS):
            gen = method.decode(model, ids[:, START + j : START + j + 1], gen)
            out[START + j + 1] = gen.logits
    return out


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_one_segment_covering_everything_is_full_attention(preset):
    """segment >= length: nothing closes, nothing is retrieved or carried, whatever tail and topk say."""
    bar, scale = _logit_bar(preset)
    ids = _ids(preset)
    params = {**SMALL, "segment": 256, "long_range_layers": [1, 2], "long_range_heads": [0]}
    got = _decoded_logits("segmented", params, _family(preset), ids)
    full64 = _setup("full", {}, _family(preset, "float64"))
    with torch.inference_mode():
        truth = {n: full64.prefill(_family(preset, "float64"), ids[:, :n]).logits for n in CHECKED}
    for n, want in truth.items():
        err = (got[n].double() - want).abs().max().item()
        assert err <= 2 * bar + 1e-6 * scale, f"length {n}: {err:.2e} vs fp32 full {bar:.2e}"


# --------------------------------------------------------------------------------------------
# Closing segments during decode, and the stored bytes


def test_segment_closes_during_decode_and_decode_writes_in_place():
    params = {"segment": 16, "tail": 6, "topk": 1, "block": 4, "long_range_layers": [0], "long_range_heads": [0]}
    model = _model()
    method = make_method("segmented", params)
    method.setup(model, device="cpu", dtype="float32")
    shape = shape_of(PRESET)
    ids = torch.randint(3, 4096, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        layer = gen.state.layers[0]
        local, lr = layer.groups
        assert (local.heads, lr.heads) == ([1], [0])
        # Local head: [tail 6; segment 16]. Long-range head: [1 block of 4; tail 6; segment 16].
        assert (gen.state.seg_len, layer.pool.length) == (14, 16)
        assert (local.k_BKWD.shape[2], local.n_vis, lr.k_BKWD.shape[2], lr.n_vis) == (22, 6, 26, 10)
        assert method.kv_cache_bytes(gen) == method.estimate(shape, 30, 4, "cpu").stored_kv_bytes
        buffers = [t.data_ptr() for t in (local.k_BKWD, local.v_BKWD, lr.k_BKWD, lr.v_BKWD)]
        for n in (31, 32, 33):
            token = gen.logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            gen = method.decode(model, token, gen)
            assert method.kv_cache_bytes(gen) == method.estimate(shape, n, 4, "cpu").stored_kv_bytes
            if n == 31:  # the token went into the same buffers: no copy of the window
                assert [t.data_ptr() for t in (local.k_BKWD, local.v_BKWD, lr.k_BKWD, lr.v_BKWD)] == buffers
            if n == 32:  # the second segment just closed: only the next window's visible part is held
                assert gen.state.seg_len == 0 and local.k_BKWD is None and lr.k_BKWD is None
                assert layer.pool.length == 32 and layer.pool.k_BHLD.shape[2] == 32  # grown by exactly one segment
                assert local.tail_k.shape[2] == 6 and lr.tail_k.shape[2] == 6 and lr.prefix_k.shape[2] == 4
        assert gen.state.seg_len == 1 and lr.n_vis == 10 and lr.k_BKWD.shape[2] == 26
        # Layer 0's K/V depend on the tokens alone: recompute them from the embeddings, in plain
        # float32 (the bar) and at float64 (the truth).
        k_pre, v = _layer0_kv(model, ids[:, :33])
        k_pre64, v64 = _layer0_kv(_model64(), ids[:, :33])
    pool_k, pool_v = layer.pool.filled()
    assert_within(pool_k, k_pre64[:, :1, :32], k_pre[:, :1, :32], "pool keys")  # head 0: long-range, pre-RoPE
    assert_within(pool_v, v64[:, :1, :32], v[:, :1, :32], "pool values")
    tail_at = torch.arange(-6, 0)
    for heads, group, at in ((slice(1, 2), local, 0), (slice(0, 1), lr, 4)):  # tails at -6..-1
        want = _rope_ref(k_pre[:, heads, 26:32], tail_at)
        assert_within(group.k_BKWD[:, :, at : at + 6], rope_truth(model, k_pre64[:, heads, 26:32], tail_at), want, "tail keys")
        assert_within(group.v_BKWD[:, :, at : at + 6], v64[:, heads, 26:32], v[:, heads, 26:32], "tail values")
    # The long-range prefix: one of the 6 candidate blocks (tokens 0..23), rotated to -10..-7. Which
    # one: the block whose values are nearest (distinct random rows: no tolerance decides it).
    start = 4 * min(range(6), key=lambda b: max_error(lr.v_BKWD[:, :, :4], v[:, :1, b * 4 : b * 4 + 4]))
    prefix_at = torch.arange(-10, -6)
    want = _rope_ref(k_pre[:, :1, start : start + 4], prefix_at)
    assert_within(lr.k_BKWD[:, :, :4], rope_truth(model, k_pre64[:, :1, start : start + 4], prefix_at), want, "prefix keys")
    new_at = torch.arange(1)
    want = _rope_ref(k_pre[:, :1, 32:33], new_at)
    assert_within(lr.k_BKWD[:, :, 10:11], rope_truth(model, k_pre64[:, :1, 32:33], new_at), want, "the new token's key")


def _layer0_kv(model, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's pre-RoPE keys and its values [1, 2, L, 32], from the embeddings."""
    attn = model.model.layers[0].self_attn
    x = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    shape = (1, ids.shape[1], 2, 32)
    return attn.k_proj(x).view(shape).transpose(1, 2), attn.v_proj(x).view(shape).transpose(1, 2)


@pytest.mark.parametrize(
    "params, length",
    [
        ({"segment": 32, "tail": 40, "topk": 2, "block": 8}, 96),  # ends on a boundary; tail spans segments
        ({"segment": 32, "tail": 8, "topk": 2, "block": 8, "long_range_layers": [0, 3]}, 77),
        ({"segment": 32, "tail": 8, "topk": 2, "block": 8, "long_range_heads": [1], "pool_device": "cpu"}, 50),
        ({"segment": 32, "tail": 0, "topk": 0, "block": 8, "long_range_layers": []}, 70),
        ({"segment": 32, "tail": 12, "topk": 3, "block": 8, "long_range_tail": False}, 100),
        ({"segment": 32, "tail": 12, "topk": 3, "block": 8, "long_range_heads": [0]}, 64),
    ],
)
def test_stored_bytes_equal_the_estimate(params, length):
    model = _model()
    method = make_method("segmented", params)
    method.setup(model, device="cpu", dtype="float32")
    ids = torch.randint(3, 4096, (1, length), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        gen = method.prefill(model, ids)
    est = method.estimate(shape_of(PRESET), length, 4, "cpu")
    assert method.kv_cache_bytes(gen) == est.stored_kv_bytes
    assert est.peak_prefill_bytes > est.weights_bytes


def test_estimate_lowers_peak_and_stored_kv_at_long_context():
    shape = shape_of("llama-3.1-8b")
    full = make_method("full", {}).estimate(shape, 131072, 2)
    seg = make_method("segmented", {}).estimate(shape, 131072, 2)
    assert seg.stored_kv_bytes < full.stored_kv_bytes / 4
    assert seg.peak_over_weights_bytes < full.peak_over_weights_bytes / 4


# --------------------------------------------------------------------------------------------
# What is refused


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"long_range_layers": [1, 4]}, "outside the model's 4 layers"),
        ({"long_range_heads": [2]}, "outside the model's 2 KV heads"),
    ],
)
def test_out_of_range_long_range_choices_are_unsupported(params, reason):
    method = make_method("segmented", params)
    with pytest.raises(Unsupported, match=reason):
        method.check(shape_of(PRESET), 1024)
    with pytest.raises(Unsupported, match=reason):
        method.setup(_model(), device="cpu", dtype="float32")


def test_other_model_families_are_unsupported():
    shape = dataclasses.replace(shape_of(PRESET), model_type="gpt2")
    with pytest.raises(Unsupported, match="rotate_half"):
        make_method("segmented", {}).check(shape, 1024)


@pytest.mark.parametrize(
    "params",
    [{"segment": 100, "block": 64}, {"long_range_layers": [1, 1]}, {"long_range_heads": [-1]}, {"tail": -1}, {"long_range_layers": "some"}],
)
def test_bad_params_are_user_errors(params):
    with pytest.raises(UserError):
        make_method("segmented", params)


# --------------------------------------------------------------------------------------------
# The Triton path, on the CPU interpreter (its own process: the mode is fixed at kernel import)

_KERNEL_SCRIPT = """
import torch
from segbench import hf
from segbench.method import make_method
model = hf.build_model("tiny-llama", dtype="float32", device="cpu", seed=0, overrides={"num_hidden_layers": 2})
model64 = hf.build_model("tiny-llama", dtype="float32", device="cpu", seed=0, overrides={"num_hidden_layers": 2}).double()
ids = torch.randint(3, 4096, (1, 20), generator=torch.Generator().manual_seed(5))
params = {"segment": 8, "tail": 4, "topk": 1, "block": 4, "long_range_layers": [1], "long_range_heads": [0]}
logits = {}
for name, kernel, m in (("torch", "torch", model), ("triton", "triton", model), ("torch64", "torch", model64)):
    method = make_method("segmented", {**params, "kernel": kernel})
    method.setup(m, device="cpu", dtype="float32")
    hf.BACKENDS.reset()
    with torch.inference_mode():
        gen = method.prefill(m, ids[:, :19])
        gen = method.decode(m, ids[:, 19:], gen)  # teacher-forced: the three runs see the same tokens
    logits[name] = gen.logits.double()
    print(name, method.attention_backend())
# The rule (tests/helpers.py): 2x the torch path's float32 error against its float64 run, plus a
# millionth of the magnitude.
truth = logits["torch64"]
bar = 2 * (logits["torch"] - truth).abs().max().item() + 1e-6 * truth.abs().max().item()
err = (logits["triton"] - truth).abs().max().item()
assert err <= bar, (err, bar)
"""


@pytest.mark.slow
def test_triton_path_matches_torch_path_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch sdpa:flash" in run.stdout and "triton triton" in run.stdout, run.stdout
