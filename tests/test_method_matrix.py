"""The shared matrix: every registered method x every tiny family, on the invariants a method owes.

A method gets these tests for free by being registered, with its own `small_params()` (the real
mechanism active on a 160-token prompt) and `reference_params()` (its degenerate setting):

- Degenerate setting == full attention (logits and greedy ids).
- Causality: appending tokens after position p never changes what the method computes at p.
- Prefill/decode consistency: prefill(ids[:N]) + k decode steps == prefill(ids[:N+k]), across a
  segment close for segmented (its small_params close a segment on the second decode step) and
  past eviction for streamingllm. A method exempt by design says why in `consistency_exempt`;
  exempt cases are skipped with that reason (visible with `pytest -rs`) and listed by a test.
- Chunked == one-shot, where a method has both (a `prefill` choice, or a `chunk_size` only).
- Stored KV bytes == the analytic model.

What "computes at p" means, for every method alike: the logits at position p, i.e. the LM head over
the model's final-norm output at p. A forward hook on that norm records every position of every
forward a method runs (prefill chunks, segments, decode steps) in order, so no method has to
expose anything; decode steps are teacher-forced with the prompt's own next tokens, so two runs
compare position by position.

Tolerance (tests/helpers.py): two float32 runs may differ by at most 2x the error that plain
float32 full attention makes against float64 on the same prompt (plus a millionth of the logits'
magnitude), never an absolute 1e-7.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest
import torch

from segbench import hf
from segbench.method import make_method, method_class, method_names
from segbench.models import shape_of

from .conftest import TINY_PRESETS
from .helpers import assert_within, max_error, tolerance

PROMPT = 160
DECODE = 8
CUTS = (61, 117)  # causality: prefixes ending inside a chunk / segment, none on a boundary
BUILTIN_EXEMPT = {"snapkv"}  # built-ins whose definition breaks prefill/decode consistency


@cache
def _model(preset: str, dtype: torch.dtype = torch.float32):
    return hf.build_model(preset, dtype="float32", device="cpu", seed=0).to(dtype)


def _ids(preset: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, shape_of(preset).vocab_size, (1, PROMPT + DECODE), generator=g)


def generate(method_name: str, params: dict, preset: str, dtype: str = "float32"):
    """(per-step logits [DECODE+1, V], greedy ids, method, stored KV bytes, generation after prefill)."""
    method = make_method(method_name, params)
    logits, tokens, kv, after_prefill = _greedy(method, _model(preset), _ids(preset)[:, :PROMPT], dtype)
    return logits, tokens, method, kv, after_prefill


def _greedy(method, model, ids, dtype: str):
    """Prefill, then DECODE greedy steps: per-step logits [DECODE+1, V], ids, stored KV bytes."""
    method.setup(model, device="cpu", dtype=dtype)
    logits, tokens = [], []
    with torch.inference_mode():
        gen = method.prefill(model, ids)
        after_prefill = gen
        kv = method.kv_cache_bytes(gen)
        for _ in range(DECODE + 1):
            logits.append(gen.logits[0].double())
            token = gen.logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            if len(tokens) <= DECODE:
                gen = method.decode(model, token, gen)
    return torch.stack(logits), tokens, kv, after_prefill


def trace(
    name: str, params: dict, preset: str, prefill: int, decode: int = 0, dtype=torch.float32
) -> torch.Tensor:
    """Logits at every position the method computes [prefill + decode, V]: prefill(ids[:prefill]),
    then `decode` teacher-forced decode steps, recorded at the model's final norm."""
    model, ids = _model(preset, dtype), _ids(preset)
    method = make_method(name, params)
    method.setup(model, device="cpu", dtype="float32")
    hidden = []
    hook = model.model.norm.register_forward_hook(lambda mod, args, out: hidden.append(out[0].clone()))
    try:
        with torch.inference_mode():
            gen = method.prefill(model, ids[:, :prefill])
            for i in range(prefill, prefill + decode):
                gen = method.decode(model, ids[:, i : i + 1], gen)
            hidden_LH = torch.cat(hidden)
            assert hidden_LH.shape[0] == prefill + decode, f"{name}: {hidden_LH.shape[0]} positions recorded"
            return model.lm_head(hidden_LH).double()
    finally:
        hook.remove()


@cache
def _bar(preset: str) -> float:
    """What plain float32 full attention may be off between two computations of one position."""
    truth = trace("full", {}, preset, PROMPT + DECODE, dtype=torch.float64)
    return tolerance(truth, trace("full", {}, preset, PROMPT + DECODE))


def _assert_agree(got: torch.Tensor, ref: torch.Tensor, preset: str, what: str) -> None:
    err, bar = max_error(got, ref), _bar(preset)
    worst = int((got - ref).abs().amax(-1).argmax())
    assert err <= bar, f"{what}: logits differ by {err:.3e} (first worst at position {worst}) > {bar:.3e}"


def _prefill_variants(name: str) -> list[dict]:
    fields = {f.name for f in dataclasses.fields(method_class(name).Params)}
    if "prefill" in fields:
        return [{"prefill": "one_shot"}, {"prefill": "chunked", "chunk_size": 48}]
    return [{}]


def _chunking_pair(name: str) -> tuple[dict, dict] | None:
    """(one-shot-like, chunked) params on top of small_params, or None where there is no choice."""
    fields = {f.name for f in dataclasses.fields(method_class(name).Params)}
    if "prefill" in fields:
        return {"prefill": "one_shot"}, {"prefill": "chunked", "chunk_size": 48}
    if "chunk_size" in fields:  # always chunked (streamingllm): one chunk vs its small chunks
        return {"chunk_size": PROMPT + DECODE}, {}
    return None


CASES = [(m, p) for m in method_names() for p in TINY_PRESETS]


@pytest.mark.parametrize("name,preset", CASES)
def test_reference_setting_reproduces_full_attention(name, preset):
    total = PROMPT + DECODE + 1
    # fp64 full attention is the truth; plain fp32 full attention's error against it sets the bar.
    truth, _ = _generate_fp64(preset)
    base, base_ids, *_ = generate("full", {}, preset)
    for variant in _prefill_variants(name):
        params = {**method_class(name).reference_params(total), **variant}
        got, ids, *_ = generate(name, params, preset)
        assert_within(got, truth, base, f"{name} {params}")
        assert ids == base_ids, f"{name} {params}: greedy ids differ from full attention"


@cache
def _generate_fp64(preset: str):
    model = _model(preset, torch.float64)
    logits, tokens, _, _ = _greedy(make_method("full", {}), model, _ids(preset)[:, :PROMPT], "float32")
    return logits, tokens


@pytest.mark.parametrize("name,preset", CASES)
def test_causal(name, preset):
    """The logits at p of prefill(ids[:N]) equal those of prefill(ids[:p+1]) for every p < N."""
    for variant in _prefill_variants(name):
        params = {**method_class(name).small_params(), **variant}
        longer = trace(name, params, preset, PROMPT)
        for cut in CUTS:
            _assert_agree(
                longer[:cut],
                trace(name, params, preset, cut),
                preset,
                f"{name} {params}: first {cut} of {PROMPT}",
            )


@pytest.mark.parametrize("name,preset", CASES)
def test_prefill_then_decode_equals_longer_prefill(name, preset):
    reason = method_class(name).consistency_exempt
    if reason:
        pytest.skip(f"{name} is exempt from prefill/decode consistency: {reason}")
    for variant in _prefill_variants(name):
        params = {**method_class(name).small_params(), **variant}
        decoded = trace(name, params, preset, PROMPT, DECODE)
        _assert_agree(
            decoded,
            trace(name, params, preset, PROMPT + DECODE),
            preset,
            f"{name} {params}: prefill({PROMPT}) + {DECODE} decodes vs prefill({PROMPT + DECODE})",
        )


def test_consistency_exemptions_are_declared_and_listed():
    exempt = {
        n: method_class(n).consistency_exempt for n in method_names() if method_class(n).consistency_exempt
    }
    print("prefill/decode consistency exemptions:", exempt)
    builtins = {"full", "segmented", "longgen", "snapkv", "streamingllm"}
    assert set(exempt) & builtins == BUILTIN_EXEMPT, f"built-in exemptions changed: {sorted(exempt)}"
    assert all(len(reason.split()) >= 5 for reason in exempt.values()), "an exemption must say why"


@pytest.mark.parametrize("name,preset", CASES)
def test_chunked_equals_one_shot(name, preset):
    pair = _chunking_pair(name)
    if pair is None:
        pytest.skip(f"{name} has no chunked/one-shot choice")
    small = method_class(name).small_params()
    one, chunked = ({**small, **v} for v in pair)
    # Prefill and then decode: a chunked prefill must leave the same state behind, too.
    _assert_agree(
        trace(name, chunked, preset, PROMPT, DECODE),
        trace(name, one, preset, PROMPT, DECODE),
        preset,
        f"{name}: {chunked} vs {one}",
    )


@pytest.mark.parametrize("name,preset", CASES)
def test_small_setting_runs_and_matches_its_memory_model(name, preset):
    shape = shape_of(preset)
    for variant in _prefill_variants(name):
        params = {**method_class(name).small_params(), **variant}
        logits, ids, method, kv, _ = generate(name, params, preset)
        assert logits.shape == (DECODE + 1, shape.vocab_size)
        assert torch.isfinite(logits).all(), f"{name} {params}: non-finite logits"
        assert len(ids) == DECODE + 1
        est = method.estimate(shape, PROMPT, 4, "cpu")
        assert kv == est.stored_kv_bytes, f"{name} {params}: stored KV {kv} != analytic {est.stored_kv_bytes}"
        assert est.peak_prefill_bytes > est.weights_bytes > 0
