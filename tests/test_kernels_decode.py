"""Flash-decoding kernel vs its plain-torch reference (CPU interpreter, or CUDA when compiled)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere in this process

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from segbench.kernels.testing import assert_within_rule, kernel_test_device  # noqa: E402

DEVICE = kernel_test_device()

from segbench.kernels.decode_attention import (  # noqa: E402
    decode_attention,
    decode_attention_lse,
    decode_attention_ref,
    merge_attention_states,
)


def _inputs(batch, n_q_heads, n_kv_heads, len_kv, head_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q_heads, head_dim, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(batch, n_kv_heads, len_kv, head_dim, generator=gen, dtype=torch.float64) for _ in range(2))
    return q, k, v


def _check(q, k, v, kv_lens=None, *, num_splits=None, what):
    ref64 = decode_attention_ref(q, k, v, kv_lens)
    ref32 = decode_attention_ref(q.float(), k.float(), v.float(), kv_lens)
    qd, kd, vd = (x.float().to(DEVICE) for x in (q, k, v))
    lens = kv_lens.to(DEVICE) if kv_lens is not None else None
    out, lse = decode_attention_lse(qd, kd, vd, lens, num_splits=num_splits, block_n=16)
    assert_within_rule(out.cpu(), ref32[0], ref64[0], f"{what} out")
    assert_within_rule(lse.cpu(), ref32[1], ref64[1], f"{what} lse")


@pytest.mark.parametrize(
    "n_q_heads, n_kv_heads, head_dim, len_kv, num_splits",
    [
        (2, 2, 64, 77, None),   # GQA 1, ragged length, automatic split count
        (4, 1, 128, 100, 3),    # GQA 4, D=128, splits of uneven block counts
        (8, 1, 64, 5, 4),       # GQA 8, fewer keys than one block: the split count collapses to 1
        (16, 2, 128, 64, 1),    # GQA 8, a single split (the merge is then a copy)
    ],
)
def test_decode_matches_reference(n_q_heads, n_kv_heads, head_dim, len_kv, num_splits):
    q, k, v = _inputs(1, n_q_heads, n_kv_heads, len_kv, head_dim, seed=len_kv + head_dim)
    _check(q, k, v, num_splits=num_splits, what=f"Hq={n_q_heads} Hkv={n_kv_heads} D={head_dim} L={len_kv}")


def test_per_sequence_lengths():
    """A preallocated cache: sequence 1 uses only its first 9 keys; its empty splits must weigh nothing."""
    q, k, v = _inputs(2, 4, 1, 90, 64, seed=1)
    _check(q, k, v, torch.tensor([90, 9]), num_splits=4, what="kv_lens")


def test_four_dim_query_keeps_its_shape():
    q, k, v = _inputs(1, 4, 2, 40, 64, seed=2)
    out = decode_attention(q[:, :, None].float().to(DEVICE), k.float().to(DEVICE), v.float().to(DEVICE), block_n=16)
    assert out.shape == (1, 4, 1, 64)
    ref64, ref32 = decode_attention_ref(q, k, v)[0], decode_attention_ref(q.float(), k.float(), v.float())[0]
    assert_within_rule(out[:, :, 0].cpu(), ref32, ref64, "4-D q")


def test_merge_attention_states_recombines_disjoint_key_sets():
    """Attention over [0, 30) and [30, 50) merged by lse equals attention over [0, 50)."""
    q, k, v = _inputs(1, 4, 2, 50, 64, seed=3)
    parts = [decode_attention_ref(q, k[:, :, s], v[:, :, s]) for s in (slice(0, 30), slice(30, 50))]
    out, lse = merge_attention_states(torch.stack([p[0] for p in parts], dim=2), torch.stack([p[1] for p in parts], dim=2))
    whole = decode_attention_ref(q, k, v)
    torch.testing.assert_close(out, whole[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, whole[1], rtol=0, atol=1e-12)


def test_rejects_more_than_one_query_token():
    kv = torch.zeros(1, 1, 8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="one query token"):
        decode_attention(torch.zeros(1, 2, 3, 64, device=DEVICE), kv, kv)


def test_kv_lens_zero_gives_zeros_and_minus_inf_lse():
    """Length 0 attends to nothing: a defined result (zeros, lse -inf), never NaN from -inf - -inf;
    the other sequence of the batch is unaffected."""
    q, k, v = _inputs(2, 4, 2, 40, 64, seed=4)
    qd, kd, vd = (x.float().to(DEVICE) for x in (q, k, v))
    out, lse = decode_attention_lse(qd, kd, vd, torch.tensor([0, 40]).to(DEVICE), num_splits=3, block_n=16)
    assert not out.isnan().any() and not lse.isnan().any()
    assert (out[0] == 0).all() and (lse[0] == float("-inf")).all()
    ref64, ref32 = decode_attention_ref(q[1:], k[1:], v[1:]), decode_attention_ref(q[1:].float(), k[1:].float(), v[1:].float())
    assert_within_rule(out[1:].cpu(), ref32[0], ref64[0], "the other sequence")


def test_kv_lens_are_clamped_to_the_cache():
    """A length above L reads the whole cache and not one key past it (the cache below is a view of
    a bigger buffer whose extra keys would change the result); a negative length is 0."""
    q, k_big, v_big = _inputs(2, 4, 1, 60, 64, seed=5)
    k, v = k_big[:, :, :45], v_big[:, :, :45]
    qd, kd, vd = (x.float().to(DEVICE) for x in (q, k_big, v_big))
    out, lse = decode_attention_lse(qd, kd[:, :, :45], vd[:, :, :45], torch.tensor([1000, -3]).to(DEVICE), block_n=16)
    ref64, ref32 = decode_attention_ref(q[:1], k[:1], v[:1]), decode_attention_ref(q[:1].float(), k[:1].float(), v[:1].float())
    assert_within_rule(out[:1].cpu(), ref32[0], ref64[0], "length > L clamped")
    assert (out[1] == 0).all() and (lse[1] == float("-inf")).all()


def test_kv_lens_must_be_integers():
    kv = torch.zeros(1, 1, 8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="integers"):
        decode_attention(torch.zeros(1, 2, 64, device=DEVICE), kv, kv, torch.tensor([3.0]))
