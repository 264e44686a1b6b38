"""LongGen block-sparse prefill and decode kernels vs plain torch (CPU interpreter, or CUDA when compiled)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere in this process

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from segbench.kernels.testing import assert_within_rule, kernel_test_device  # noqa: E402

DEVICE = kernel_test_device()

from segbench.kernels.block_sparse import (  # noqa: E402
    attended_pairs,
    block_mask,
    block_sparse_attention,
    block_sparse_attention_lse,
    block_sparse_attention_ref,
    block_sparse_decode,
    block_sparse_decode_ref,
    token_mask,
)


def _inputs(n_q_heads, n_kv_heads, seq_len, head_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, n_q_heads, seq_len, head_dim, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, n_kv_heads, seq_len, head_dim, generator=gen, dtype=torch.float64) for _ in range(2))
    return q, k, v


def _dev(*xs):
    return [x.float().to(DEVICE) for x in xs]


def test_block_mask_by_hand():
    # sink 1, local window 2 (diagonal + previous), stride 3 (blocks 2, 5, ... : j % 3 == 2).
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 1, 1, 0, 0, 0],
        [1, 0, 1, 1, 1, 0, 0],
        [1, 0, 1, 0, 1, 1, 0],
        [1, 0, 1, 0, 0, 1, 1],
    ], dtype=torch.bool)
    torch.testing.assert_close(block_mask(7, 7, 1, 2, 3), expected)
    # Bottom-right: two query blocks over seven key blocks are the last two prefill rows.
    torch.testing.assert_close(block_mask(2, 7, 1, 2, 3), expected[-2:])
    # No sink, no stride, window 1: only the diagonal.
    torch.testing.assert_close(block_mask(4, 4, 0, 1, 0), torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        block_mask(4, 4, 1, 0, 2)  # without the diagonal block a token would not see itself


def test_attended_pairs_counts_the_token_mask():
    for seq_len, block in ((100, 16), (64, 16), (1000, 64)):
        assert attended_pairs(seq_len, block, 1, 3, 4) == int(token_mask(seq_len, seq_len, block, 1, 3, 4).sum())


@pytest.mark.parametrize(
    "n_q_heads, n_kv_heads, head_dim, seq_len, sink, local, stride",
    [
        (2, 2, 64, 100, 1, 2, 3),   # GQA 1, ragged last block, all three pattern parts
        (4, 1, 128, 90, 0, 1, 2),   # GQA 4, D=128, diagonal + stride only
        (8, 1, 64, 83, 2, 1, 0),    # GQA 8, sink + diagonal, no stride
        (4, 2, 128, 64, 1, 2, 4),   # length a multiple of the block size
    ],
)
def test_prefill_matches_reference(n_q_heads, n_kv_heads, head_dim, seq_len, sink, local, stride):
    q, k, v = _inputs(n_q_heads, n_kv_heads, seq_len, head_dim, seed=seq_len + head_dim)
    pattern = (sink, local, stride)
    ref64 = block_sparse_attention_ref(q, k, v, *pattern, block_size=16)
    ref32 = block_sparse_attention_ref(q.float(), k.float(), v.float(), *pattern, block_size=16)
    out, lse = block_sparse_attention_lse(*_dev(q, k, v), *pattern, block_size=16)
    what = f"Hq={n_q_heads} Hkv={n_kv_heads} D={head_dim} L={seq_len} pattern={pattern}"
    assert_within_rule(out.cpu(), ref32[0], ref64[0], f"{what} out")
    assert_within_rule(lse.cpu(), ref32[1], ref64[1], f"{what} lse")


@pytest.mark.parametrize("pattern", [(7, 1, 0), (0, 7, 0), (0, 1, 1)])
def test_pattern_covering_everything_is_dense_causal(pattern):
    """All-sink, all-local or stride 1 keep every causal block: dense causal attention (SDPA)."""
    q, k, v = _inputs(4, 2, 100, 64, seed=sum(pattern))

    def dense(q, k, v):
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    out = block_sparse_attention(*_dev(q, k, v), *pattern, block_size=16)
    assert_within_rule(out.cpu(), dense(q.float(), k.float(), v.float()), dense(q, k, v), f"full {pattern}")


@pytest.mark.parametrize("n_q_heads, n_kv_heads, head_dim, seq_len", [(4, 1, 64, 100), (8, 1, 128, 70), (2, 2, 64, 33)])
def test_decode_matches_reference_and_last_prefill_row(n_q_heads, n_kv_heads, head_dim, seq_len):
    q, k, v = _inputs(n_q_heads, n_kv_heads, seq_len, head_dim, seed=seq_len)
    pattern = (1, 1, 2)
    q_last = q[:, :, -1]
    ref64 = block_sparse_decode_ref(q_last, k, v, *pattern, block_size=16)[0]
    ref32 = block_sparse_decode_ref(q_last.float(), k.float(), v.float(), *pattern, block_size=16)[0]
    out = block_sparse_decode(*_dev(q_last, k, v), *pattern, block_size=16, num_splits=2)
    assert_within_rule(out.cpu(), ref32, ref64, f"decode Hq={n_q_heads} Hkv={n_kv_heads} D={head_dim}")
    # The newest token's row of the prefill reference is the same computation.
    prefill64 = block_sparse_attention_ref(q, k, v, *pattern, block_size=16)[0][:, :, -1]
    torch.testing.assert_close(ref64, prefill64, rtol=0, atol=1e-12)


def test_prefill_rejects_cross_attention():
    q = torch.zeros(1, 2, 32, 64, device=DEVICE)
    kv = torch.zeros(1, 2, 48, 64, device=DEVICE)
    with pytest.raises(ValueError, match="self-attention"):
        block_sparse_attention(q, kv, kv, 1, 1, 2, block_size=16)


# --- the pattern's block decoupled from the kernel's tile --------------------------------------


@pytest.mark.parametrize("block_size, pattern", [(32, (1, 2, 3)), (64, (0, 1, 2))])
def test_blocks_larger_than_the_tile(block_size, pattern):
    """A pattern block of 32/64 tokens runs as 2/4 tiles of 16 (the interpreter's tile): prefill and
    decode still follow the token-level pattern exactly."""
    from segbench.kernels.block_sparse import tile_size

    assert tile_size(torch.float32, 64, block_size, DEVICE.type) < block_size or DEVICE.type == "cuda"
    q, k, v = _inputs(4, 2, 150, 64, seed=block_size)
    ref64 = block_sparse_attention_ref(q, k, v, *pattern, block_size=block_size)
    ref32 = block_sparse_attention_ref(q.float(), k.float(), v.float(), *pattern, block_size=block_size)
    out, lse = block_sparse_attention_lse(*_dev(q, k, v), *pattern, block_size=block_size)
    assert_within_rule(out.cpu(), ref32[0], ref64[0], f"block {block_size} out")
    assert_within_rule(lse.cpu(), ref32[1], ref64[1], f"block {block_size} lse")
    q_last = q[:, :, -1]
    d64 = block_sparse_decode_ref(q_last, k, v, *pattern, block_size=block_size)[0]
    d32 = block_sparse_decode_ref(q_last.float(), k.float(), v.float(), *pattern, block_size=block_size)[0]
    dec = block_sparse_decode(*_dev(q_last, k, v), *pattern, block_size=block_size, num_splits=2)
    assert_within_rule(dec.cpu(), d32, d64, f"block {block_size} decode")


def test_gpu_tile_configs_fit_hopper_shared_memory_for_every_block():
    """On a GPU every pattern block (16..1024) gets tiles <= 128 (<= 64 at D=256) whose first choice
    fits an H100/H200's 227 KB; the old behaviour (tile = block) needed ~320 KB at block 256, D=128."""
    from segbench.kernels._triton import SHARED_LIMIT, tile_shared_bytes
    from segbench.kernels.block_sparse import configs

    for head_dim in (64, 128, 256):
        for block in (16, 32, 64, 128, 256, 1024):
            for dtype in (torch.bfloat16, torch.float16):
                cands = configs(dtype, head_dim, block, "cuda")
                assert all(block % c["BLOCK"] == 0 and c["BLOCK"] <= (64 if head_dim > 128 else 128) for c in cands)
                first = cands[0]
                assert tile_shared_bytes(first["BLOCK"], first["BLOCK"], head_dim, first["num_stages"], 2) <= SHARED_LIMIT[90]
    assert tile_shared_bytes(256, 256, 128, 2, 2) > SHARED_LIMIT[90]  # what the tile = block kernel needed


def test_out_of_resources_falls_back_then_fails_clearly(monkeypatch):
    """A config the compiler rejects (OutOfResources) makes way for the next; if none fits, one clear
    RuntimeError, never Triton's OutOfResources."""
    from segbench.kernels import _triton

    class OutOfResources(Exception):  # matched by name, like triton.runtime.errors.OutOfResources
        pass

    tried = []

    def launch(cfg):
        tried.append(cfg["BLOCK"])
        if cfg["BLOCK"] > 32:
            raise OutOfResources("shared memory")
        return cfg["BLOCK"]

    cands = [dict(BLOCK=128), dict(BLOCK=64), dict(BLOCK=32)]
    assert _triton.launch_first_fitting(launch, cands, lambda c: 0, torch.device("cpu"), "k") == 32
    assert tried == [128, 64, 32]
    with pytest.raises(RuntimeError, match="ran out of GPU resources"):
        _triton.launch_first_fitting(launch, cands[:2], lambda c: 0, torch.device("cpu"), "k")
    monkeypatch.setattr(_triton, "shared_limit", lambda device: 1000)
    with pytest.raises(RuntimeError, match="no tile configuration fits"):
        _triton.launch_first_fitting(launch, cands, lambda c: c["BLOCK"] * 100, torch.device("cpu"), "k")
    with pytest.raises(ValueError):  # any other error passes through untouched
        _triton.launch_first_fitting(lambda c: int("x"), cands, lambda c: 0, torch.device("cpu"), "k")
