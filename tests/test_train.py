"""segbench train: training forwards (full / segmented), gradient paths, equality with inference, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench import segments
from segbench.errors import UserError
from segbench.method import make_method
from segbench.train import data, forward
from segbench.train.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RulerDataConfig,
    RunConfig,
    SegmentedConfig,
    TrainConfig,
    load_config,
)
from segbench.train.model import new_model, read_record
from segbench.typed import from_dict

from .helpers import assert_within

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "segbench" / "presets" / "trained"
TINY_MODEL = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
# S=16, M=4, R=1 x 8, layer 1 long-range (all heads): layer 0 holds the only tail.
TINY_SEG = SegmentedConfig(segment=16, tail=4, topk=1, block=8, long_range_layers=(1,), long_range_heads="all")


def tiny_config(attention: str, steps: int = 20) -> TrainConfig:
    return TrainConfig(
        runs=(RunConfig("t", attention, "unused"),), model=TINY_MODEL, segmented=TINY_SEG,
        data=DataConfig(length=49, pair_density=0.6, keys=8, key_words=8, values=8),
        optim=OptimConfig(steps=steps, batch_size=8, lr=1e-2, warmup=2),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def test_editable_install_imports_the_subpackage():
    import segbench.train.cli as cli

    assert Path(cli.__file__).resolve().parent == REPO / "segbench" / "train"
    assert callable(cli.train_main)


def test_config_refuses_unknown_keys_and_training_seed_reuse(tmp_path):
    with pytest.raises(UserError, match="unknown key 'step'"):
        from_dict(TrainConfig, {"runs": [{"name": "a", "attention": "full", "out": "x"}], "optim": {"step": 3}}, "t.yaml")
    with pytest.raises(UserError, match="held-out"):
        from_dict(TrainConfig, {"runs": [{"name": "a", "attention": "full", "out": "x"}], "eval": {"seed": 0}}, "t.yaml")
    assert len(load_config(REPO / "train" / "consistency_toy.yaml").runs) == 2


def test_the_asked_pair_lies_once_before_the_questions_segment_and_tail():
    cfg = DataConfig(length=49, pair_density=0.6, keys=8, key_words=8, values=8)
    ids, answers, recall = data.make_batch(cfg, 32, np.random.default_rng(0), 4)
    limit = data.pair_limit(cfg, 4)
    assert limit == 49 - 1 - 4
    for row in range(32):
        a, b = int(ids[row, -2]), int(ids[row, -1])
        where = [i for i in range(1, ids.shape[1] - 3) if int(ids[row, i]) == a]
        # Once, whole pair before the question's segment (which opens at the last token) minus the tail.
        assert len(where) == 1 and where[0] + 2 < limit
        assert int(ids[row, where[0] + 1]) == b and int(ids[row, where[0] + 2]) == int(answers[row])
        assert b not in [int(t) for t in ids[row, : where[0] + 1]] + [int(t) for t in ids[row, where[0] + 2 : -1]]
        for pos in recall[row].nonzero().flatten().tolist():  # a recall target: what followed the same token before
            prev = int(ids[row, pos - 1])
            first = [i for i in range(1, pos - 1) if int(ids[row, i]) == prev]
            assert first and int(ids[row, first[0] + 1]) == int(ids[row, pos])
    assert recall.sum() > 32


def test_the_asked_keys_first_word_is_a_segments_last_query():
    """The causal rule picks the question segment's blocks with the previous segment's last query:
    that must be the asked key's first word, and the recipe refuses lengths that break it."""
    cfg = tiny_config("segmented")
    seg = cfg.segmented.segment
    assert (cfg.data.length - 2) % seg == seg - 1 and (cfg.data.length - 1) % seg == 0
    with pytest.raises(UserError, match="one more than a multiple of segmented.segment"):
        from_dict(TrainConfig, {"runs": [{"name": "a", "attention": "full", "out": "x"}],
                                "segmented": {"segment": 16, "tail": 4, "block": 8}, "data": {"length": 48}}, "t.yaml")


@pytest.mark.parametrize("attention", ["full", "segmented"])
def test_twenty_steps_lower_the_loss(attention):
    from segbench.train.loop import train_run

    cfg = tiny_config(attention)
    result = train_run(cfg, cfg.runs[0], progress=False)
    assert result.steps == 20
    assert result.last_loss < result.first_loss - 1.0, (result.first_loss, result.last_loss)


class _AttachedPool(segments.Pool):
    """Control only: a pool that keeps autograd (concatenates instead of filling reserved storage in place)."""

    def append(self, k_BHLD, v_BHLD, reserve=0):
        cat = self.k_BHLD is not None
        self.k_BHLD = torch.cat([self.k_BHLD, k_BHLD], dim=2) if cat else k_BHLD
        self.v_BHLD = torch.cat([self.v_BHLD, v_BHLD], dim=2) if cat else v_BHLD
        self.length = self.k_BHLD.shape[2]


class _AttachedLayerKV(segments.LayerKV):
    """Control only: the pool keeps autograd."""

    detach_pool = False

    def __init__(self, *args):
        super().__init__(*args)
        self.pool = _AttachedPool(self.pool.device) if self.pool else None


class _OlderTailAttachedLayerKV(segments.LayerKV):
    """Control only: tail tokens of older segments keep autograd."""

    detach_older_tail = False


def _embeds_grad(model, method, ids, loss_pos: int, layer_cls=segments.LayerKV):
    """d(sum of logits at loss_pos) / d(input embeddings), and the state the forward used."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    state = forward.segmented_state(method, model, ids.shape[1], layer_cls)
    h = forward.segmented_hidden(model, method, ids, embeds, state)
    model.get_output_embeddings()(h[:, loss_pos]).sum().backward()
    return embeds.grad[0].abs().sum(dim=-1), state


def test_retrieved_prefix_passes_no_gradient():
    # Long-range heads without a tail: layer 0's local tail is the only visible KV that keeps autograd.
    cfg = tiny_config("segmented")
    model = new_model(cfg.model, seed=0)
    method = forward.segmented_method_for(model, {**cfg.segmented.method_params(), "long_range_tail": False})
    ids = data.make_batch(cfg.data, 1, np.random.default_rng(1), 4)[0][:, :48]  # three whole segments
    grad, state = _embeds_grad(model, method, ids, loss_pos=31)  # the last token of segment 2 (16..31)
    assert (grad[12:16] > 0).all()  # segment 1's last M=4 tokens: the carried tail
    assert (grad[:12] == 0).all()  # outside the tail: pooled and retrievable, but the prefix is detached
    assert (grad[32:] == 0).all()  # causality
    pool = state.layers[1].pool
    assert pool.length == 48 and not pool.k_BHLD.requires_grad and not pool.v_BHLD.requires_grad
    assert state.layers[1].lr_group.prefix_k is not None  # something was retrieved for segment 3
    # Control: the same forward with a pool that keeps autograd does send gradient back through the
    # retrieved block, so the zeros above are the detachment, not an accident of the data.
    grad_attached, _ = _embeds_grad(model, method, ids, loss_pos=31, layer_cls=_AttachedLayerKV)
    assert grad_attached[:12].sum() > 0


def test_long_range_tail_carries_gradient_through_depth():
    # With their tail, layer 1's long-range heads see segment 1's last tokens, whose layer-1 KV came
    # out of layer 0's attention over all of segment 1: gradient reaches the whole previous segment.
    cfg = tiny_config("segmented")
    model = new_model(cfg.model, seed=0)
    method = forward.segmented_method_for(model, {**cfg.segmented.method_params(), "topk": 0})
    ids = data.make_batch(cfg.data, 1, np.random.default_rng(1), 4)[0][:, :48]  # three whole segments
    grad, _ = _embeds_grad(model, method, ids, loss_pos=31)
    assert (grad[:32] > 0).all() and (grad[32:] == 0).all()


def test_outside_the_tail_and_without_retrieval_no_gradient():
    cfg = tiny_config("segmented")
    model = new_model(cfg.model, seed=0)
    method = forward.segmented_method_for(model, {**cfg.segmented.method_params(), "topk": 0, "long_range_tail": False})
    ids = data.make_batch(cfg.data, 1, np.random.default_rng(2), 4)[0][:, :48]  # three whole segments
    grad, _ = _embeds_grad(model, method, ids, loss_pos=47)
    assert (grad[28:32] > 0).all() and (grad[:28] == 0).all()


def test_gradient_reaches_only_the_immediately_preceding_segment():
    # One layer (no path through depth), all heads local, tail M=24 > S=16: segment 3's window holds
    # tokens 8..15 of segment 1 and all of segment 2 as its tail, but only segment 2's KV keeps autograd.
    model_cfg = dataclasses.replace(TINY_MODEL, num_layers=1)
    model = new_model(model_cfg, seed=0)
    params = {**TINY_SEG.method_params(), "tail": 24, "long_range_layers": []}
    method = forward.segmented_method_for(model, params)
    ids = torch.randint(5, 200, (1, 48), generator=torch.Generator().manual_seed(0))
    grad, state = _embeds_grad(model, method, ids, loss_pos=47)
    assert state.layers[0].groups[0].tail_k.shape[2] == 24  # the tail did span two segments
    assert (grad[16:] > 0).all() and (grad[:16] == 0).all()
    # Control: without detaching older tail tokens, segment 1's tokens in the tail get gradient too.
    grad_attached, _ = _embeds_grad(model, method, ids, loss_pos=47, layer_cls=_OlderTailAttachedLayerKV)
    assert (grad_attached[8:16] > 0).all() and (grad_attached[:8] == 0).all()


@pytest.mark.parametrize("length", [48, 41, 16, 9])
def test_training_forward_equals_the_inference_adapters(length):
    cfg = tiny_config("segmented")
    model = new_model(cfg.model, seed=3)
    ids = data.make_batch(cfg.data, 1, np.random.default_rng(4), 4)[0][:, :length]
    head = model.get_output_embeddings()
    with torch.no_grad():
        seg_train = head(forward.hidden_states(model, "segmented", ids, cfg.segmented.method_params())[:, -1])
        full_train = head(forward.hidden_states(model, "full", ids, {})[:, -1])
    model.eval()
    seg_logits, full_logits = _inference_logits(model, ids)
    # The bar: the inference adapters at float32 against the same adapters on a float64 copy. (Rope
    # re-rotates stored keys in float32 even on a float64 model, so the segmented truth keeps that
    # rounding; it is ~1e-7 relative, inside the rule's floor of 1e-6 of the magnitude.)
    seg_truth, full_truth = _inference_logits(copy.deepcopy(model).double(), ids)
    assert_within(seg_train, seg_truth, seg_logits, "segmented training forward")
    assert_within(full_train, full_truth, full_logits, "full training forward")
    if length > 16 + 4:  # past one segment and its tail the two executions really differ
        assert (seg_logits - full_logits).abs().max() > 1e-3


def _inference_logits(model, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits of the segmented and the full inference adapters, in the model's dtype."""
    out = []
    with torch.inference_mode():
        for name, params in (("segmented", TINY_SEG.method_params()), ("full", {})):
            method = make_method(name, params)
            method.setup(model, device="cpu", dtype="float32")
            out.append(method.prefill(model, ids).logits)
    return out[0], out[1]


@pytest.mark.parametrize("name", ["tiny-llama-retrieval-seg", "tiny-llama-retrieval-full"])
def test_shipped_checkpoint_reproduces_its_recorded_score(name):
    from segbench.train.evaluate import fixed_sample_scores, load_trained

    path = SHIPPED / name
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{name} not trained yet (segbench train train/consistency_toy.yaml)")
    assert (path / "model.safetensors").stat().st_size < 5 * 1024 * 1024
    record = read_record(path)
    cfg = from_dict(TrainConfig, record["config"], "segbench_train.json")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, fixed_n=record["fixed_sample"]["n"]))
    again = fixed_sample_scores(load_trained(path), cfg)
    assert again["full"] == record["fixed_sample"]["full"]
    # A checkpoint scored under an older segmented rule (newest-query selection, not causal) keeps
    # a full-attention score that must reproduce; its segmented score cannot, until it is retrained.
    if record.get("segmented_rule") == segments.SEGMENTED_RULE:
        assert again["segmented"] == record["fixed_sample"]["segmented"]


def ruler_config(steps: int = 6) -> TrainConfig:
    return TrainConfig(
        runs=(RunConfig("niah", "full", "unused"),), task="ruler", model=TINY_MODEL,
        segmented=SegmentedConfig(segment=64, tail=32, topk=1, block=16, long_range_layers=(1,)),
        ruler=RulerDataConfig(min_length=128, max_length=192), eval=EvalConfig(seed=500_000, fixed_n=2, curve_every=3, curve_n=2),
        optim=OptimConfig(steps=steps, batch_size=2, lr=3e-3, warmup=1),
    )


def test_ruler_samples_are_the_suites_prompts_plus_answer_and_eos():
    """A training sample is exactly the prompt an accuracy cell reads (same generator, same ids), then
    ' NUMBER' and EOS, and the loss mask covers just those tokens."""
    from segbench.accuracy import ruler
    from segbench.accuracy.tokenizer import load_tokenizer
    from segbench.train import ruler_data

    tok = load_tokenizer("tiny")
    cfg = ruler_config().ruler
    ids, target, answer = ruler_data.sample(cfg, 160, 1_234_567)
    prompt = ruler.sample_token_ids(tok, ruler.generate("niah_single_1", 160, 1, tok, seed=1_234_567)[0])
    n = len(prompt)
    assert ids[0, :n].tolist() == prompt and not target[0, :n].any() and target[0, n:].all()
    assert tok.decode(ids[0, n:-1]).strip() == answer and int(ids[0, -1]) == tok.eos_token_id
    lengths = [ruler_data.draw_length(cfg, np.random.default_rng(i)) for i in range(50)]
    assert min(lengths) >= 128 and max(lengths) <= 192


def test_ruler_recipe_keeps_training_seeds_apart_from_evaluation_seeds():
    with pytest.raises(UserError, match="ruler.seed must be >= 1000"):
        from_dict(TrainConfig, {"runs": [{"name": "a", "attention": "full", "out": "x"}], "task": "ruler",
                                "ruler": {"seed": 0}}, "t.yaml")
    with pytest.raises(UserError, match="held-out RULER seeds"):
        from_dict(TrainConfig, {"runs": [{"name": "a", "attention": "full", "out": "x"}], "task": "ruler",
                                "ruler": {"seed": 1_000_000}, "eval": {"seed": 950_000}}, "t.yaml")
    cfg = load_config(REPO / "train" / "ruler_niah_tiny.yaml")
    assert cfg.task == "ruler" and cfg.runs[0].out.endswith("tiny-llama-niah")


def test_ruler_training_runs_and_logs_a_learning_curve():
    from segbench.train.loop import train_run

    cfg = ruler_config()
    result = train_run(cfg, cfg.runs[0], progress=False)
    assert result.steps == 6
    assert [p["step"] for p in result.curve] == [0, 3, 6]
    assert all({"full_infer", "seg_infer"} <= set(p) for p in result.curve)
    assert "train_recall_loss" in result.curve[-1] and result.last_loss < result.first_loss


def test_init_from_copies_matching_tensors_and_keeps_the_rest_fresh(tmp_path):
    from segbench.train.model import init_from_checkpoint, save_checkpoint

    small = new_model(TINY_MODEL, seed=1)
    save_checkpoint(small, tmp_path / "ck", {"note": "test"})
    deeper = new_model(dataclasses.replace(TINY_MODEL, num_layers=3), seed=2)
    fresh_before = deeper.model.layers[2].self_attn.q_proj.weight.clone()
    info = init_from_checkpoint(deeper, tmp_path / "ck")
    assert torch.equal(deeper.model.layers[1].mlp.up_proj.weight, small.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(deeper.model.embed_tokens.weight, small.model.embed_tokens.weight)
    assert torch.equal(deeper.model.layers[2].self_attn.q_proj.weight, fresh_before)
    assert all(n.startswith("model.layers.2.") for n in info["fresh"]) and info["fresh"]
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        init_from_checkpoint(deeper, tmp_path)
