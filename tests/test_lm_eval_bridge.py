"""The lm-eval bridge: requests through a method score like a plain forward, and lm-eval runs end to end.

Everything is local: the tiny-llama preset (random weights), the shipped tiny tokenizer, and
task YAMLs over jsonl files written into the test's tmp dir.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Before anything imports `datasets`, which reads it once: the tasks below are local files.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[accuracy]')")

from lm_eval.api.instance import Instance  # noqa: E402

from segbench.errors import UserError  # noqa: E402
from segbench.lm_eval_bridge import SegbenchLM, method_params  # noqa: E402

from .helpers import assert_within  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing in the old oak tree".split()


def _text(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Requests run one short sequence at a time. On a shared 2-core machine two torch threads
    # spin against each other: a 35-token tiny-llama forward took 0.03 s on one, 0.9 s on two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def full_lm() -> SegbenchLM:
    return SegbenchLM(pretrained="tiny-llama", method="full", dtype="float32", device="cpu")


def _request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


# --------------------------------------------------------------------------------------------
# Units


def test_loglikelihood_through_full_equals_a_plain_forward(full_lm):
    context, continuation = _text(1, 30), " " + _text(2, 6)
    (logprob, greedy), = full_lm.loglikelihood([_request("loglikelihood", context, continuation)], disable_tqdm=True)

    ctx, cont = full_lm._encode_pair(context, continuation)
    assert len(cont) > 1  # several continuation tokens, so decode steps are exercised
    def plain_forward(model) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
        logprobs = logits[len(ctx) - 1 : -1].log_softmax(dim=-1)  # the positions that predict each continuation token
        return float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum()), logprobs

    expected, logprobs = plain_forward(full_lm.model)  # plain float32: the bar
    truth, _ = plain_forward(copy.deepcopy(full_lm.model).double())  # the same at float64: the truth
    assert_within(torch.tensor(logprob), torch.tensor(truth), torch.tensor(expected), "summed log-prob")
    assert greedy == bool((logprobs.argmax(dim=-1) == torch.tensor(cont)).all())


def test_greedy_flag_is_true_for_the_models_own_greedy_continuation(full_lm):
    context = _text(3, 20)
    generated = full_lm.generate(full_lm.tok_encode(context), [], 4)
    assert generated
    (_, greedy), = full_lm.loglikelihood([_request("loglikelihood", context, generated)], disable_tqdm=True)
    assert greedy


def test_generate_until_stops_at_the_until_string(full_lm, monkeypatch):
    context = _text(4, 25)
    steps = []
    real_decode = full_lm._decode
    monkeypatch.setattr(full_lm, "_decode", lambda token, gen: steps.append(token) or real_decode(token, gen))

    (free,) = full_lm.generate_until([_request("generate_until", context, {"max_gen_toks": 12})], disable_tqdm=True)
    free_steps = len(steps)
    assert free_steps <= 11  # max_gen_toks tokens: the first from prefill, the rest from decode
    assert len(free) >= 4, f"the random model stopped early: {free!r}"

    stop = free[len(free) // 2 : len(free) // 2 + 2]
    steps.clear()
    (cut,) = full_lm.generate_until(
        [_request("generate_until", context, {"until": [stop], "max_gen_toks": 12})], disable_tqdm=True
    )
    assert cut == free[: free.find(stop)]
    assert stop not in cut
    assert len(steps) < free_steps  # generation stopped, rather than being cut afterwards


def test_loglikelihood_rolling_scores_every_token_after_the_prefix(full_lm):
    text = _text(5, 12)
    (logprob,) = full_lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)], disable_tqdm=True)
    expected, _ = full_lm.score([full_lm.prefix_token_id], full_lm.tok_encode(text, add_special_tokens=False))
    assert logprob == pytest.approx(expected, abs=1e-6) and logprob < 0


def test_method_params_are_typed_and_unknown_keys_list_the_valid_ones():
    assert method_params("snapkv", {"budget": "1024", "pooling": "avg"}).budget == 1024
    assert method_params("streamingllm", {"window": 64}).window == 64  # lm-eval may already have made it an int
    with pytest.raises(UserError, match=r"model_args\.budget: expected an integer"):
        method_params("snapkv", {"budget": "lots"})
    with pytest.raises(UserError, match=r"unknown key.*'budgt'.*did you mean 'budget'.*valid keys: pretrained"):
        SegbenchLM(pretrained="tiny-llama", method="snapkv", budgt=1024)


# --------------------------------------------------------------------------------------------
# lm-eval end to end


def _write_tasks(root: Path) -> None:
    gen = [{"question": f"{_text(i, 30)} answer:", "answer": " fox"} for i in range(3)]
    mc = [{"question": _text(i + 3, 30), "choices": [" fox", " dog", " tree"], "label": i % 3} for i in range(3)]
    for name, rows in (("gen", gen), ("mc", mc)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = (
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {json.dumps(str(root / '{name}.jsonl'))}}}\n"
        f"  cache_dir: {json.dumps(str(root / 'hf-datasets'))}\n"
        "test_split: test\n"
    )
    (root / "segbench_tiny_gen.yaml").write_text(
        "task: segbench_tiny_gen\n" + dataset.replace("{name}", "gen")
        + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs: {until: [\"\\n\", \".\"], max_gen_toks: 6, do_sample: false}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
    )
    (root / "segbench_tiny_mc.yaml").write_text(
        "task: segbench_tiny_mc\n" + dataset.replace("{name}", "mc")
        + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    _write_tasks(root)
    return root


@pytest.mark.parametrize(
    "method_args",
    ["method=full", "method=streamingllm,sinks=4,window=16,chunk_size=8"],  # the window evicts: prompts are ~35 tokens
)
def test_simple_evaluate_runs_tasks_through_the_method(task_dir, method_args):
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="segbench",
        model_args=f"pretrained=tiny-llama,{method_args},dtype=float32,device=cpu",
        tasks=["segbench_tiny_gen", "segbench_tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=False,
    )
    assert "exact_match,none" in results["results"]["segbench_tiny_gen"]
    assert "acc,none" in results["results"]["segbench_tiny_mc"]
    assert 0.0 <= results["results"]["segbench_tiny_mc"]["acc,none"] <= 1.0
    assert results["config"]["segbench_method"] == method_args.split(",")[0].split("=")[1]


# `python -m segbench.lm_eval_bridge`, as run by hand, except that lm-eval's task index skips the
# 14,683 tasks lm-eval ships (26 s on 2 busy cores, and the CLI has no flag to skip them).
_RUN_AS_MAIN = """
import runpy, sys
import lm_eval.tasks


class LocalTasksOnly(lm_eval.tasks.TaskManager):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, include_defaults=False, **kwargs)


lm_eval.tasks.TaskManager = LocalTasksOnly
sys.argv = ["segbench.lm_eval_bridge", *sys.argv[1:]]
runpy.run_module("segbench.lm_eval_bridge", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_python_m_runs_lm_evals_cli_with_segbench_registered(task_dir, tmp_path):
    # Also covers the CLI passing its own --device (default cuda:0) next to device=cpu in model_args.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _RUN_AS_MAIN, "--model", "segbench",
         "--model_args", "pretrained=tiny-llama,method=snapkv,budget=8,window=4,kernel=3,dtype=float32,device=cpu",
         "--tasks", "segbench_tiny_mc", "--include_path", str(task_dir), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "segbench_tiny_mc" in out.stdout and "acc" in out.stdout
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert written and json.loads(written[0].read_text())["config"]["segbench_method"] == "snapkv"
