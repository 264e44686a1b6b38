"""LongGen against small hand-computed references: layer split, masks, tiled attention, compacted KV, decode."""

from __future__ import annotations

import types
from functools import cache

import pytest
import torch

from segbench import hf, memory_model
from segbench.errors import UserError
from segbench.method import Unsupported, make_method
from segbench.models import shape_of

from .helpers import assert_within

SINK_WINDOW = {"full_layers": [1, 2], "sink": 4, "window": 24, "query_tile": 64}
STRIDED = {"full_layers": [1, 2], "pattern": "strided", "block": 8, "sink_blocks": 1, "local_blocks": 2,
           "stride": 4, "query_tile": 40}
PROMPT = 160
# Hand-computed stored positions of a sparse layer after 160 tokens (next query at 160).
# sink_window: k < 4 or k > 160 - 24.
KEPT_SINK_WINDOW = [*range(4), *range(137, 160)]
# strided: the next query's block is 20; its row keeps block 0 (sink), 3, 7, 11, 15, 19 (j % 4 == 3),
# 19 and 20 (20 - j < 2). Block 20 holds nothing yet.
KEPT_STRIDED = [p for b in (0, 3, 7, 11, 15, 19) for p in range(8 * b, 8 * b + 8)]


def test_full_layers_default_to_the_middle_third():
    method = make_method("longgen", {})
    assert method.full_layer_ids(4) == [1]
    assert method.full_layer_ids(32) == list(range(10, 21))  # 11 of 32: layers 10..20
    assert method.full_layer_ids(28) == list(range(9, 18))  # 9 of 28: layers 9..17
    assert make_method("longgen", {"full_layers": "all"}).full_layer_ids(4) == [0, 1, 2, 3]
    assert make_method("longgen", {"full_layers": "none"}).full_layer_ids(4) == []
    assert make_method("longgen", {"full_layers": [2, 0]}).full_layer_ids(4) == [0, 2]


def test_full_layers_out_of_range_or_invalid_are_refused():
    with pytest.raises(Unsupported, match=r"out of range.*0\.\.3"):
        make_method("longgen", {"full_layers": [0, 4]}).check(shape_of("tiny-llama"), 128)
    make_method("longgen", {"full_layers": [0, 3]}).check(shape_of("tiny-llama"), 128)
    for bad in ({"full_layers": [1, 1]}, {"full_layers": [-1]}, {"full_layers": "middle"}, {"window": 0}):
        with pytest.raises(UserError):
            make_method("longgen", bad)


# Rows are queries, columns keys, both positions 0..L-1.
SINK_WINDOW_MASK = """
10000000
11000000
11100000
11110000
11111000
11011100
11001110
11000111"""
# block 2, 1 sink block, 2 local blocks, stride 3 (key block j kept for any query block if j % 3 == 2).
STRIDED_MASK = """
100000000000
110000000000
111000000000
111100000000
111110000000
111111000000
110011100000
110011110000
110011111000
110011111100
110011001110
110011001111"""


def _bool_matrix(text: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in text.split()])


PATTERNS = [
    ({"sink": 2, "window": 3}, SINK_WINDOW_MASK),
    ({"pattern": "strided", "block": 2, "sink_blocks": 1, "local_blocks": 2, "stride": 3}, STRIDED_MASK),
]


@pytest.mark.parametrize("params,text", PATTERNS)
def test_pattern_mask_matches_the_hand_written_one(params, text):
    expected = _bool_matrix(text)
    method = make_method("longgen", params)
    pos = torch.arange(expected.shape[0])
    assert torch.equal(method.allowed(pos, pos), expected)
    assert torch.equal(method.allowed(pos[5:9], pos), expected[5:9])  # a chunk of queries: bottom rows


@pytest.mark.parametrize("params,text", PATTERNS)
def test_kept_tokens_are_what_later_queries_can_reach(params, text):
    method = make_method("longgen", params)
    for next_pos in range(1, 12):
        pos = torch.arange(next_pos)
        kept = method.allowed(torch.tensor([next_pos]), pos)[0]
        assert method.kept_tokens(next_pos) == int(kept.sum())
    if params.get("pattern") == "strided":  # next query in block 6 keeps blocks 0, 2 (stride) and 5 (local)
        assert method.allowed(torch.tensor([12]), torch.arange(12))[0].nonzero()[:, 0].tolist() == [0, 1, 4, 5, 10, 11]
    else:
        assert method.allowed(torch.tensor([8]), torch.arange(8))[0].nonzero()[:, 0].tolist() == [0, 1, 6, 7]


def _masked_attention(q_BHQD, k_BHKD, v_BHKD, mask_QK):
    group = q_BHQD.shape[1] // k_BHKD.shape[1]
    k, v = k_BHKD.repeat_interleave(group, 1), v_BHKD.repeat_interleave(group, 1)
    scores = (q_BHQD @ k.transpose(-1, -2)) / q_BHQD.shape[-1] ** 0.5
    return (scores.masked_fill(~mask_QK, float("-inf")).softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("params,text", PATTERNS)
@pytest.mark.parametrize("tile", [1, 3, 100])
def test_sparse_attention_equals_plain_masked_attention(params, text, tile):
    expected = _bool_matrix(text)
    n = expected.shape[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, n, 16, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    method = make_method("longgen", {**params, "query_tile": tile})
    module = types.SimpleNamespace(is_causal=True)
    ref = _masked_attention(q, k, v, expected)
    got = method.sparse_attention(module, q, k, v, torch.arange(n), None)
    # fp64 on both sides: the bar is plain fp32 PyTorch's error against this fp64 reference.
    plain = _masked_attention(q.float(), k.float(), v.float(), expected)
    assert_within(got, ref, plain, "one-shot tiles")
    # A later chunk over a compacted cache: the keys stored at its start plus the chunk itself.
    start = 7
    stored = method.allowed(torch.tensor([start]), torch.arange(start))[0].nonzero()[:, 0]
    pos_K = torch.cat([stored, torch.arange(start, n)])
    got = method.sparse_attention(module, q[:, :, start:], k[:, :, pos_K], v[:, :, pos_K], pos_K, None)
    assert_within(got, ref[:, start:], plain[:, start:], "later chunk")


# --------------------------------------------------------------------------------------------
# Whole model: LongGen against an independent, uncompacted mask-based forward


@cache
def _model(double: bool = False):
    model = hf.build_model("tiny-llama", dtype="float32", device="cpu", seed=0)
    return model.double() if double else model


def _reference_mask(params: dict, q_pos_Q, k_pos_K, sparse: bool):
    q, k = q_pos_Q[:, None], k_pos_K[None, :]
    if not sparse:
        return k <= q
    if params.get("pattern") == "strided":
        qb, kb = q // params["block"], k // params["block"]
        keep = (kb < params["sink_blocks"]) | (qb - kb < params["local_blocks"]) | (kb % params["stride"] == params["stride"] - 1)
        return keep & (k <= q)
    return (k <= q) & ((k < params["sink"]) | (q - k < params["window"]))


def _reference_run(params: dict, ids, next_token, double: bool = False):
    """Plain masked attention over an ordinary, never-compacted cache: (prefill logits, cache, decode logits)."""
    sparse = {0, 3} - set(params["full_layers"])

    def attention(module, query, key, value, attention_mask, **kwargs):
        n_k, n_q = key.shape[2], query.shape[2]
        pos_K = torch.arange(n_k)
        mask = _reference_mask(params, pos_K[n_k - n_q :], pos_K, module.layer_idx in sparse)
        return _masked_attention(query, key, value, mask), None

    hf.register_attention("test_longgen_reference", attention, hf.no_mask)
    model = _model(double)
    hf.set_attention(model, "test_longgen_reference")
    ref_cache = hf.new_cache(model)
    with torch.inference_mode():
        prefill = hf.forward_last_logits(model, ids, ref_cache)
        decode = hf.forward_last_logits(model, next_token, ref_cache)
    return prefill, ref_cache, decode


@pytest.mark.parametrize("params,kept", [(SINK_WINDOW, KEPT_SINK_WINDOW), (STRIDED, KEPT_STRIDED)])
@pytest.mark.parametrize("prefill", [{"prefill": "one_shot"}, {"prefill": "chunked", "chunk_size": 48}])
def test_compacted_prefill_and_decode_match_the_uncompacted_reference(params, kept, prefill):
    ids = torch.randint(3, 4096, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    next_token = torch.tensor([[17]])
    ref_prefill, ref_cache, ref_decode = _reference_run(params, ids, next_token)
    truth_prefill, truth_cache, truth_decode = _reference_run(params, ids, next_token, double=True)

    model = _model()
    method = make_method("longgen", {**params, **prefill})
    method.setup(model, device="cpu", dtype="float32")
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        for i, layer in enumerate(gen.state.layers):
            if i in params["full_layers"]:
                assert not isinstance(layer, hf.PositionedLayer) and layer.keys.shape[2] == PROMPT
                continue
            # Stored order is not position order once eviction filled holes from the end.
            order = layer.positions.argsort()
            assert layer.positions[order].tolist() == kept
            # The stored K/V are the reference's K/V at exactly those positions.
            for name in ("keys", "values"):
                assert_within(getattr(layer, name)[:, :, order], getattr(truth_cache.layers[i], name)[:, :, kept],
                               getattr(ref_cache.layers[i], name)[:, :, kept], f"layer {i} {name}")
        assert method.kv_cache_bytes(gen) == method.estimate(shape_of("tiny-llama"), PROMPT, 4, "cpu").stored_kv_bytes
        assert_within(gen.logits, truth_prefill, ref_prefill, "prefill logits")
        gen = method.decode(model, next_token, gen)
    assert_within(gen.logits, truth_decode, ref_decode, "decode logits")
    assert gen.state.layers[0].seen == PROMPT + 1 and gen.next_position == PROMPT + 1
    assert gen.state.layers[0].positions.numel() == method.kept_tokens(PROMPT + 1)


# --------------------------------------------------------------------------------------------
# Memory model


def test_kv_reduction_at_128k_matches_the_layer_arithmetic():
    method = make_method("longgen", {})
    for preset in ("llama-2-7b", "llama-3.1-8b"):  # 32 layers: 11 full, 21 sparse keeping 64 + 1984 - 1 tokens
        expected = 21 / 32 * (1 - 2047 / 131072)
        assert method.kv_reduction(shape_of(preset), 131072) == pytest.approx(expected)  # 64.6%; paper: 62%
    strided = make_method("longgen", {"pattern": "strided"})
    # 128K = 2048 blocks of 64; the next query's block 2048 reaches block 0, 16 stride blocks (127,
    # 255, ..., 2047) and local blocks 2033..2048; before it: 1 + 16 + 15 - 1 (2047 twice) = 31 blocks.
    assert strided.kept_tokens(131072) == 31 * 64


def test_estimate_lowers_peak_prefill_below_full_attention():
    shape = shape_of("llama-3.1-8b")
    full = make_method("full", {})
    for params in ({}, {"prefill": "chunked"}, {"pattern": "strided"}):
        est = make_method("longgen", params).estimate(shape, 131072, 2, "cuda")
        full_est = full.estimate(shape, 131072, 2, "cuda")
        assert est.stored_kv_bytes < full_est.stored_kv_bytes
        assert est.peak_prefill_bytes < full_est.peak_prefill_bytes
    # One-shot peak KV: 11 full layers at 128K + 21 sparse at 2047 + the sparse layer in flight at 128K.
    est = make_method("longgen", {}).estimate(shape, 131072, 2, "cuda")
    kv = memory_model.kv_bytes(shape, 131072, 2, 12) + memory_model.kv_bytes(shape, 2047, 2, 21)
    assert est.peak_prefill_bytes > est.weights_bytes + kv


def test_strided_pattern_is_the_kernels_token_mask():
    from segbench.kernels.block_sparse import token_mask

    for block, sink_blocks, local_blocks, stride, length in [(2, 1, 2, 3, 12), (4, 0, 1, 2, 37), (8, 2, 3, 0, 50)]:
        method = make_method("longgen", {"pattern": "strided", "block": block, "sink_blocks": sink_blocks,
                                         "local_blocks": local_blocks, "stride": stride})
        pos = torch.arange(length)
        assert torch.equal(method.allowed(pos, pos), token_mask(length, length, block, sink_blocks, local_blocks, stride))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_strided_prefill_runs_the_kernel_and_matches_the_mask_path():
    params = {**STRIDED, "block": 16, "local_blocks": 2, "stride": 3}
    ids = torch.randint(3, 4096, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    logits = {}
    for device in ("cpu", "cuda"):
        model = hf.build_model("tiny-llama", dtype="float32", device=device, seed=0)
        method = make_method("longgen", params)
        method.setup(model, device=device, dtype="float32")
        hf.BACKENDS.reset()
        with torch.inference_mode():
            gen = method.prefill(model, ids.to(device))
            logits[device] = method.decode(model, torch.tensor([[17]], device=device), gen).logits.cpu()
        assert ("triton:block_sparse" in method.attention_backend()) == (device == "cuda")
    # The CPU mask path is the reference here; the bar is 2x its own fp32 error against fp64.
    model64 = hf.build_model("tiny-llama", dtype="float32", device="cpu", seed=0).double()
    method = make_method("longgen", params)
    method.setup(model64, device="cpu", dtype="float32")
    with torch.inference_mode():
        gen = method.prefill(model64, ids)
        truth = method.decode(model64, torch.tensor([[17]]), gen).logits
    assert_within(logits["cuda"], truth, logits["cpu"], "cuda kernel path")


@pytest.mark.parametrize("params", [SINK_WINDOW, STRIDED])
def test_chunked_prefill_equals_one_shot_then_greedy_decode(params):
    """Chunked == one-shot (logits and greedy ids over a few decode steps), within the fp64 bar."""
    ids = torch.randint(3, 4096, (1, PROMPT), generator=torch.Generator().manual_seed(2))

    def greedy(model, prefill):
        method = make_method("longgen", {**params, **prefill})
        method.setup(model, device="cpu", dtype="float32")
        out, tokens = [], []
        with torch.inference_mode():
            gen = method.prefill(model, ids)
            for i in range(5):
                out.append(gen.logits[0].double())
                tokens.append(int(gen.logits.argmax()))
                if i < 4:
                    gen = method.decode(model, gen.logits.argmax(-1, keepdim=True), gen)
        return torch.stack(out), tokens

    truth, truth_ids = greedy(_model(True), {"prefill": "one_shot"})
    one, one_ids = greedy(_model(), {"prefill": "one_shot"})
    for chunk in (29, 48):
        got, got_ids = greedy(_model(), {"prefill": "chunked", "chunk_size": chunk})
        assert_within(got, truth, one, f"chunk {chunk}")
        assert got_ids == one_ids == truth_ids


# The shared matrix runs LongGen's small_params (sink_window); the strided pattern owes the same
# invariants, checked here with the matrix's own helpers on one family (same 2x-fp32 bar). Block 6:
# the prompt ends inside block 26 and decode crosses into block 27, which drops block 25 (local, not
# a stride block), so eviction at a block boundary happens during decode too.
STRIDED_SMALL = {"pattern": "strided", "block": 6, "sink_blocks": 1, "local_blocks": 2, "stride": 4, "query_tile": 40}


@pytest.mark.parametrize("prefill", [{"prefill": "one_shot"}, {"prefill": "chunked", "chunk_size": 48}])
def test_strided_pattern_passes_the_matrix_invariants(prefill):
    from .test_method_matrix import CUTS, DECODE, _assert_agree, generate, trace
    from .test_method_matrix import PROMPT as M_PROMPT

    preset, params = "tiny-llama", {**STRIDED_SMALL, **prefill}
    longer = trace("longgen", params, preset, M_PROMPT)
    for cut in CUTS:  # causality
        _assert_agree(longer[:cut], trace("longgen", params, preset, cut), preset, f"strided {params}: first {cut}")
    decoded = trace("longgen", params, preset, M_PROMPT, DECODE)  # prefill/decode consistency
    _assert_agree(decoded, trace("longgen", params, preset, M_PROMPT + DECODE), preset, f"strided {params}: decode")
    if prefill["prefill"] == "chunked":  # chunked == one-shot
        one = trace("longgen", {**STRIDED_SMALL, "prefill": "one_shot"}, preset, M_PROMPT, DECODE)
        _assert_agree(decoded, one, preset, f"strided {params} vs one-shot")
    _, _, method, kv, _ = generate("longgen", params, preset)  # stored KV == the analytic model, and evicted
    assert kv == method.estimate(shape_of(preset), M_PROMPT, 4, "cpu").stored_kv_bytes
    assert kv < make_method("full", {}).estimate(shape_of(preset), M_PROMPT, 4, "cpu").stored_kv_bytes
