"""SnapKV against hand-computed references: per-group voting under GQA, the pooling's effect, the
window always kept, no expansion to query heads, and decode over exactly the kept positions."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from segbench.methods import snapkv

from segbench import hf, kv
from segbench.method import make_method

from .helpers import assert_within, max_error, tolerance
from .test_streamingllm import PRESET, _ids, _model, attention_by_hand, forward_token_by_hand, rope_reference

# --------------------------------------------------------------------------------------------
# The vote, on hand-built queries and keys


def one_hot_keys(kv_heads: int, length: int) -> torch.Tensor:
    """Key j is the unit vector e_j (D = L): a query's logits are then its own coordinates."""
    return torch.eye(length).expand(1, kv_heads, length, length).clone()


def votes_by_hand(q_BHWD, k_BKLD, scaling, pooling, kernel, dtype=torch.float64) -> torch.Tensor:
    """Loops, one query head and one window query at a time: [B, Hkv, L - W], computed in `dtype`."""
    _, heads, window, _ = q_BHWD.shape
    kv_heads, length = k_BKLD.shape[1], k_BKLD.shape[2]
    groups, prefix = heads // kv_heads, length - window
    out = torch.zeros(1, kv_heads, prefix, dtype=dtype)
    for h in range(heads):
        votes = torch.zeros(prefix, dtype=dtype)
        for i in range(window):
            visible = prefix + i + 1  # window query i sits at position prefix + i
            logits = (k_BKLD[0, h // groups, :visible].to(dtype) @ q_BHWD[0, h, i].to(dtype)) * scaling
            votes += torch.softmax(logits, dim=0)[:prefix]
        pooled = torch.zeros(prefix, dtype=dtype)
        for j in range(prefix):
            around = [
                votes[m] if 0 <= m < prefix else 0.0 for m in range(j - kernel // 2, j + kernel // 2 + 1)
            ]
            pooled[j] = (
                max(around) if pooling == "max" else sum(around) / kernel
            )  # zero padding counts, as avg_pool1d
        out[0, h // groups] += pooled / groups
    return out


def assert_votes_close(got, q_BHWD, k_BKLD, scaling, pooling, kernel) -> None:
    """got (fp32) within 2x the error of the same votes in plain fp32 PyTorch against fp64 (floor:
    1e-6 of the magnitude): an exact 1e-7 would depend on the CPU's summation order."""
    truth = votes_by_hand(q_BHWD, k_BKLD, scaling, pooling, kernel)
    plain = votes_by_hand(q_BHWD, k_BKLD, scaling, pooling, kernel, torch.float32).double()
    assert_within(got, truth, plain, "votes")


def test_each_kv_group_votes_with_all_its_query_heads():
    # 4 query heads over 2 KV heads (heads 0, 1 -> KV 0; heads 2, 3 -> KV 1). Each query head looks
    # at one position; the group's mean vote keeps both of its heads' choices.
    length, window, targets = 10, 2, (1, 6, 3, 4)
    q_BHWD = torch.zeros(1, 4, window, length)
    for h, t in enumerate(targets):
        q_BHWD[0, h, :, t] = 12.0
    k_BKLD = one_hot_keys(2, length)
    votes = snapkv.window_votes(q_BHWD, k_BKLD, 1.0, "max", 1)
    assert_votes_close(votes, q_BHWD, k_BKLD, 1.0, "max", 1)
    index = snapkv.keep_index(votes, budget=2, window=window)
    assert index.tolist() == [[[1, 6, 8, 9], [3, 4, 8, 9]]]  # the window 8, 9 always, never voted on
    kept = kv.gather_positions(k_BKLD, index)
    assert kept.shape == (1, 2, 4, length)  # Hkv heads, not the 4 query heads
    assert torch.equal(kept[0, 1, 0], k_BKLD[0, 1, 3])


def test_pooling_keeps_the_neighbours_of_a_peak():
    # Both query heads: logit 5 at position 3, 4 at position 7, 0 elsewhere.
    length, window = 12, 2
    q_BHWD = torch.zeros(1, 2, window, length)
    q_BHWD[..., 3], q_BHWD[..., 7] = 5.0, 4.0
    k_BKLD = one_hot_keys(1, length)
    plain = snapkv.window_votes(q_BHWD, k_BKLD, 1.0, "max", 1)
    assert snapkv.keep_index(plain, 2, window).tolist() == [[[3, 7, 10, 11]]]
    # Max kernel 3: 2 and 4 inherit the peak's vote and outrank the second peak.
    pooled = snapkv.window_votes(q_BHWD, k_BKLD, 1.0, "max", 3)
    assert_votes_close(pooled, q_BHWD, k_BKLD, 1.0, "max", 3)
    assert snapkv.keep_index(pooled, 3, window).tolist() == [[[2, 3, 4, 10, 11]]]
    averaged = snapkv.window_votes(q_BHWD, k_BKLD, 1.0, "avg", 5)
    assert_votes_close(averaged, q_BHWD, k_BKLD, 1.0, "avg", 5)


def test_budget_beyond_the_prefix_keeps_everything():
    votes = torch.rand(1, 2, 5)
    assert snapkv.keep_index(votes, budget=9, window=3).tolist() == [[list(range(8)), list(range(8))]]


# --------------------------------------------------------------------------------------------
# On the tiny Llama (8 query heads over 2 KV heads)

LENGTH, BUDGET, WINDOW, KERNEL = 72, 20, 8, 3
PARAMS = {"budget": BUDGET, "window": WINDOW, "kernel": KERNEL, "pooling": "avg"}


def prefill(params: dict, ids: torch.Tensor, name: str = "snapkv"):
    model = _model()
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    with torch.inference_mode():
        gen = method.prefill(model, ids)
    return method, gen


def kept_positions(compact: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Which rows of full [1, Hkv, L, D] each row of compact [1, Hkv, K, D] is: [1, Hkv, K]."""
    same_BKCL = (compact[:, :, :, None, :] == full[:, :, None, :, :]).all(dim=-1)
    assert (same_BKCL.sum(dim=-1) == 1).all(), "every kept key is exactly one prompt key"
    return same_BKCL.float().argmax(dim=-1)


def window_queries_by_hand(ids: torch.Tensor, layer_idx: int) -> torch.Tensor:
    """Post-RoPE queries of the last WINDOW prompt tokens at one layer, from the layer's input: [1, H, W, D]."""
    model = _model()
    with torch.inference_mode():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer_idx][0, -WINDOW:]
        attn = model.model.layers[layer_idx].self_attn
        q_HWD = (
            attn.q_proj(model.model.layers[layer_idx].input_layernorm(hidden))
            .view(WINDOW, -1, 32)
            .transpose(0, 1)
        )
        return rope_reference(q_HWD, torch.arange(LENGTH - WINDOW, LENGTH))[None]


def test_real_model_keeps_its_top_voted_positions_per_kv_head():
    ids = _ids(LENGTH)
    _, gen = prefill(PARAMS, ids)
    _, full = prefill({}, ids, name="full")
    compact, dense = hf.cache_tensors(gen.state), hf.cache_tensors(full.state)
    heads_differ = False
    for layer_idx in range(4):
        keys = compact[2 * layer_idx]
        assert keys.shape == (1, 2, BUDGET + WINDOW, 32)  # per KV head, never expanded to 8 heads
        index = kept_positions(keys, dense[2 * layer_idx])
        assert torch.equal(
            compact[2 * layer_idx + 1],
            dense[2 * layer_idx + 1].gather(2, index[..., None].expand(-1, -1, -1, 32)),
        )
        assert (index[..., -WINDOW:] == torch.arange(LENGTH - WINDOW, LENGTH)).all()
        q = window_queries_by_hand(ids, layer_idx)
        ref = votes_by_hand(q, dense[2 * layer_idx], 32**-0.5, "avg", KERNEL)
        # segbench ranks float32 votes: near-ties may order differently than the float64 truth, by
        # at most 2x plain float32's vote error against it (tests/helpers.py), never a fixed 1e-6.
        plain = votes_by_hand(q, dense[2 * layer_idx], 32**-0.5, "avg", KERNEL, torch.float32)
        slack = tolerance(ref, plain)
        for head in range(2):
            chosen = index[0, head, :BUDGET]
            dropped = torch.ones(LENGTH - WINDOW, dtype=torch.bool)
            dropped[chosen] = False
            assert ref[0, head, chosen].min() >= ref[0, head, dropped].max() - slack
        heads_differ |= not torch.equal(index[0, 0], index[0, 1])
    assert heads_differ  # each KV head chooses its own positions


def test_decode_after_compaction_is_attention_over_exactly_the_kept_positions():
    ids = _ids(LENGTH)
    method, gen = prefill(PARAMS, ids)
    _, full = prefill({}, ids, name="full")
    model, compact, dense = _model(), hf.cache_tensors(gen.state), hf.cache_tensors(full.state)
    # By hand: per layer and KV head, the prompt's dense keys/values at the kept positions, then
    # each decoded token's own key rotated at its true position (not at the cache length). Twice:
    # in plain float32 (the bar) and on a float64 copy over the same kept K/V (the truth).
    stores = {torch.float32: [], torch.float64: []}
    for layer_idx in range(4):
        index = kept_positions(compact[2 * layer_idx], dense[2 * layer_idx])[0]  # [Hkv, K]
        k, v = dense[2 * layer_idx][0], dense[2 * layer_idx + 1][0]
        for dtype, store in stores.items():
            store.append([t.gather(1, index[..., None].expand(-1, -1, 32)).to(dtype) for t in (k, v)])
    token, position = int(gen.logits.argmax()), LENGTH
    for _ in range(3):

        def by_hand(reference, store, token=token, position=position):
            def attend(i, q_HD, k_KD, v_KD):
                pos = torch.tensor([position])
                store[i][0] = torch.cat([store[i][0], rope_reference(k_KD[:, None], pos)], dim=1)
                store[i][1] = torch.cat([store[i][1], v_KD[:, None]], dim=1)
                return attention_by_hand(rope_reference(q_HD[:, None], pos)[:, 0], *store[i])

            return forward_token_by_hand(reference, token, attend)

        with torch.inference_mode():
            plain = by_hand(model, stores[torch.float32])
            truth = by_hand(_model(torch.float64), stores[torch.float64])
            gen = method.decode(model, torch.tensor([[token]]), gen)
        assert_within(gen.logits[0], truth, plain, f"decode at {position}")
        token, position = int(gen.logits.argmax()), position + 1
    assert gen.next_position == LENGTH + 3


@cache
def _model64():
    return hf.build_model(PRESET, dtype="float32", device="cpu", seed=0).double()


def _greedy(params: dict, ids: torch.Tensor, model, steps: int = 3):
    """(logits [steps + 1, V] fp64, greedy ids, cache tensors after prefill) of snapkv on `model`."""
    method = make_method("snapkv", params)
    method.setup(model, device="cpu", dtype="float32")
    logits, tokens = [], []
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        cache = [t.clone() for t in hf.cache_tensors(gen.state)]
        for i in range(steps + 1):
            logits.append(gen.logits[0].double())
            tokens.append(int(gen.logits.argmax()))
            if i < steps:
                gen = method.decode(model, gen.logits.argmax(-1, keepdim=True), gen)
    return torch.stack(logits), tokens, cache


def _within(got, truth, plain) -> bool:
    return max_error(got, truth) <= tolerance(truth, plain)


@pytest.mark.parametrize("chunk_size", [37, 24])  # last chunk shorter than the window / a multiple
def test_chunked_prefill_votes_like_one_shot(chunk_size):
    """Same kept K/V (a different kept position would be off by O(1), far past the bar), same
    logits and greedy ids, within 2x plain fp32's error against fp64."""
    ids = _ids(LENGTH)
    truth, truth_ids, truth_cache = _greedy(PARAMS, ids, _model64())
    one, one_ids, one_cache = _greedy(PARAMS, ids, _model())
    got, got_ids, got_cache = _greedy({**PARAMS, "prefill": "chunked", "chunk_size": chunk_size}, ids, _model())
    for a, b, c in zip(got_cache, truth_cache, one_cache, strict=True):
        assert a.shape == b.shape and _within(a, b, c)
    assert _within(got, truth, one)
    assert got_ids == one_ids == truth_ids


def _post_hoc(params: dict, ids: torch.Tensor) -> list[torch.Tensor]:
    """The old order: dense prefill capturing the window queries, then every layer compacted after it."""
    model = _model()
    method = make_method("snapkv", params)
    method.setup(model, device="cpu", dtype="float32")
    p = method.params
    capture = snapkv.WindowCapture(p.window, method)  # compact stays False: capture only
    cache = hf.new_cache(model)
    step = p.chunk_size if p.prefill == "chunked" else ids.shape[1]
    with torch.inference_mode():
        for start in range(0, ids.shape[1], step):
            hf.forward_last_logits(model, ids[:, start : start + step], cache, snapkv_capture=capture)
        for layer_idx, q in capture.queries.items():
            k, v = hf.get_cache_layer(cache, layer_idx)
            method.compact_layer(cache, layer_idx, q, k, v, capture.scaling[layer_idx])
    return hf.cache_tensors(cache)


@pytest.mark.parametrize("mode", [{}, {"prefill": "chunked", "chunk_size": 24}])
def test_per_layer_compaction_keeps_what_post_hoc_compaction_keeps(mode):
    """Compacting inside each layer's attention changes nothing a later layer computes (eviction
    acts on the cache only after this layer's attention), so the kept K/V are bit-identical."""
    ids = _ids(LENGTH)
    _, gen = prefill({**PARAMS, **mode}, ids)
    for a, b in zip(hf.cache_tensors(gen.state), _post_hoc({**PARAMS, **mode}, ids), strict=True):
        assert torch.equal(a, b)  # the same ops on the same inputs in the same order


def test_one_shot_prefill_holds_one_layers_full_kv_at_a_time(monkeypatch):
    """Each layer's full KV is compacted before the next layer writes its own (reference SnapKV and
    kvpress do the same); control: full attention keeps every layer's."""
    ids = _ids(LENGTH)
    caches, most = [], {}
    new_cache, update = hf.new_cache, hf.InPlaceLayer.update

    def spy_new_cache(*args, **kwargs):
        caches.append(new_cache(*args, **kwargs))
        return caches[-1]

    def spy_update(self, *args, **kwargs):
        out = update(self, *args, **kwargs)
        full = sum(layer.get_seq_length() >= LENGTH for layer in caches[-1].layers)
        most[len(caches)] = max(most.get(len(caches), 0), full)
        return out

    monkeypatch.setattr(hf, "new_cache", spy_new_cache)
    monkeypatch.setattr(hf.InPlaceLayer, "update", spy_update)
    prefill(PARAMS, ids)
    prefill({}, ids, name="full")
    assert most == {1: 1, 2: 4}, most
