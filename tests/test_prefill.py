"""Full attention's prefill and decode paths: chunked equals one-shot, chunks build no [chunk x
context] mask and never expand K/V to the query heads, decode writes a preallocated cache in place
and equals transformers' DynamicCache decode, no FutureWarning per call, and peak memory never
holds full-sequence logits.

Tolerances follow the project rule: at most 2x the error plain fp32 PyTorch makes against fp64,
plus a floor of 1e-6 of the logits' magnitude."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from functools import cache

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from segbench import hf
from segbench.method import make_method

from .conftest import TINY_PRESETS
from .helpers import assert_within

DECODE = 4


@cache
def _model(preset: str, double: bool = False):
    model = hf.build_model(preset, dtype="float32", device="cpu", seed=0)
    return model.double() if double else model


def _ids(n: int) -> torch.Tensor:
    return torch.randint(3, 4096, (1, n), generator=torch.Generator().manual_seed(0))


def run(name: str, params: dict, model, ids, steps: int = DECODE):
    """Prefill + greedy decode: (logits [steps + 1, V] in fp64, greedy ids, method, generation)."""
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    logits, tokens = [], []
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        for i in range(steps + 1):
            logits.append(gen.logits[0].double())
            token = gen.logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            if i < steps:
                gen = method.decode(model, token, gen)
    return torch.stack(logits), tokens, method, gen


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_chunked_prefill_equals_one_shot(preset):
    ids = _ids(333)
    truth, truth_ids, *_ = run("full", {}, _model(preset, True), ids)
    one, one_ids, _, one_gen = run("full", {"prefill": "one_shot"}, _model(preset), ids)
    assert one_ids == truth_ids
    for chunk in (7, 100, 333, 1000):
        got, got_ids, method, gen = run("full", {"prefill": "chunked", "chunk_size": chunk}, _model(preset), ids)
        assert_within(got, truth, one, f"{preset} chunk {chunk}")
        assert got_ids == one_ids
        if chunk < 333:
            assert "lse_merge" in method.attention_backend(), method.attention_backend()
        for a, b in zip(hf.cache_tensors(gen.state), hf.cache_tensors(one_gen.state), strict=True):
            assert a.shape == b.shape


class ShapeSpy(TorchDispatchMode):
    """Records the shape of every tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


CHUNK, CHUNKS = 48, 7  # no model dimension of the tiny presets is a multiple of 48


def _chunked_shapes(name: str, params: dict, implementation: str | None = None):
    model = _model("tiny-llama")
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    if implementation:
        model.set_attn_implementation(implementation)
    with torch.inference_mode(), ShapeSpy() as spy:
        method.prefill(model, _ids(CHUNK * CHUNKS))
    contexts = {CHUNK * j for j in range(2, CHUNKS + 1)}
    heads = model.config.num_attention_heads
    masks = [s for _, s in spy.shapes if len(s) >= 2 and s[-2] == CHUNK and s[-1] in contexts]
    expanded = [s for _, s in spy.shapes if len(s) == 4 and s[1] == heads and s[2] in contexts]
    return masks, expanded


@pytest.mark.parametrize(
    "name,params",
    [
        ("full", {"prefill": "chunked", "chunk_size": CHUNK}),
        ("snapkv", {"prefill": "chunked", "chunk_size": CHUNK, "budget": 40, "window": 8, "kernel": 3}),
        ("longgen", {"prefill": "chunked", "chunk_size": CHUNK, "full_layers": "all"}),
    ],
)
def test_chunks_build_no_chunk_by_context_tensor(name, params):
    masks, expanded = _chunked_shapes(name, params)
    assert not masks, f"{name}: [chunk x context] tensors {masks[:3]}"
    assert not expanded, f"{name}: K/V expanded to the query heads over the context {expanded[:3]}"


def test_the_spy_sees_the_mask_transformers_sdpa_builds():
    """Control: transformers' own sdpa path builds a [chunk x context] mask per chunk."""
    masks, _ = _chunked_shapes("full", {"prefill": "chunked", "chunk_size": CHUNK}, implementation="sdpa")
    assert masks


def _dynamic_cache_greedy(model, ids, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Plain transformers: DynamicCache, its own sdpa attention, greedy decode."""
    model.set_attn_implementation("sdpa")
    cache_kw = hf.cache_kwarg(model)
    logits, tokens = [], []
    with torch.inference_mode():
        c = __import__("transformers").DynamicCache(config=model.config)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: c}).logits[:, -1]
        for i in range(steps + 1):
            logits.append(out[0].double())
            token = out.argmax(-1, keepdim=True)
            tokens.append(int(token))
            if i < steps:
                out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_kw: c}).logits[:, -1]
    return torch.stack(logits), tokens


@pytest.mark.parametrize("prefill", ["one_shot", "chunked"])
def test_in_place_decode_equals_dynamic_cache_decode(prefill):
    ids, steps = _ids(200), 12
    truth, _ = _dynamic_cache_greedy(_model("tiny-llama", True), ids, steps)
    plain, plain_ids = _dynamic_cache_greedy(_model("tiny-llama"), ids, steps)
    got, got_ids, _, gen = run("full", {"prefill": prefill, "chunk_size": 64}, _model("tiny-llama"), ids, steps)
    assert_within(got, truth, plain, "in-place decode")
    assert got_ids == plain_ids


def test_decode_writes_the_preallocated_buffer_in_place():
    model = _model("tiny-llama")
    method = make_method("full", {})
    method.setup(model, device="cpu", dtype="float32")
    with torch.inference_mode():
        gen = method.prefill(model, _ids(100))
        layer = gen.state.layers[0]
        assert isinstance(layer, hf.InPlaceLayer)
        storage = layer.keys.untyped_storage().data_ptr()
        for _ in range(5):
            gen = method.decode(model, gen.logits.argmax(-1, keepdim=True), gen)
            assert layer.keys.untyped_storage().data_ptr() == storage  # no copy, no re-allocation
        assert layer.keys.shape[2] == 105 == gen.state.get_seq_length()
    # Past the reserve the layer grows (by at least 1/8), once, not per token.
    grown = hf.InPlaceLayer()
    k = torch.zeros(1, 2, 10, 4)
    grown.update(k, k)
    first = grown.keys.untyped_storage().data_ptr()
    for _ in range(hf.DECODE_RESERVE):
        grown.update(k[:, :, :1], k[:, :, :1])
    assert grown.keys.untyped_storage().data_ptr() == first
    grown.update(k[:, :, :1], k[:, :, :1])
    assert grown.keys.untyped_storage().data_ptr() != first and grown.keys.shape[2] == 10 + hf.DECODE_RESERVE + 1


@pytest.mark.parametrize(
    "name,params",
    [("full", {}), ("full", {"prefill": "chunked", "chunk_size": 32}), ("snapkv", {"budget": 40, "window": 8}),
     ("longgen", {"sink": 8, "window": 24, "prefill": "chunked", "chunk_size": 32})],
)
def test_no_future_warning_per_call(name, params):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        run(name, params, _model("tiny-llama"), _ids(100), steps=2)


PROBE = textwrap.dedent(
    """
    import sys, torch
    from segbench import hf, measure
    keep = sys.argv[1] == "keep"
    model = hf.build_model("tiny-llama", dtype="float32", device="cpu", overrides={"vocab_size": 32000})
    ids = torch.randint(3, 32000, (1, 2048))
    kw = {hf.cache_kwarg(model): hf.new_cache(model)}
    with torch.inference_mode(), measure.CpuPeakRss() as rec:
        if keep:
            hf.forward_last_logits(model, ids, hf.new_cache(model))
        else:
            model(input_ids=ids, use_cache=True, **kw)
    print(rec.delta_bytes)
    """
)


def _peak(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_peak_prefill_memory_excludes_full_sequence_logits():
    full_logits = 2048 * 32000 * 4  # 262 MB of fp32 logits for every position
    with_keep = _peak("keep")
    without = _peak("all")
    assert without > full_logits, "control: logits for every position must show up in the peak"
    assert with_keep < 0.5 * full_logits, f"peak {with_keep} still holds full-sequence logits"
