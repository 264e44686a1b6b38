"""The prompts the harness builds are the ones the official harnesses build (issue 15), each
checked against a frozen expected prompt: the BOS the length fit counted, CWE's settings at 4K,
RULER's VT in-context example, the typo-fixed VT prefix, chat templates for instruct models,
LongBench-E buckets and LongBench v2's two scorers."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from segbench.accuracy import harness, ruler_config
from segbench.accuracy.chat import NoChatTemplate, default_chat_template, resolve_chat_template
from segbench.accuracy.cli import data_ruler_main
from segbench.accuracy.ruler import generate, sample_token_ids
from segbench.accuracy.tokenizer import TINY_TOKENIZER_PATH, count_tokens, load_tokenizer
from segbench.method import Unsupported

ROOT = Path(__file__).resolve().parent.parent
BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
# Llama-3.1-Instruct's chat template, reduced to what shapes a one-turn prompt: BOS, the dated
# system header it always writes, the trimmed user turn, the assistant header.
LLAMA31_CHAT = (
    "{{- bos_token }}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHAT_HEAD = (f"{BOS}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
             f"Today Date: 26 Jul 2024\n\n{EOT}<|start_header_id|>user<|end_header_id|>\n\n")
CHAT_ASSISTANT = f"{EOT}<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama31_like(folder: Path, chat: bool = True) -> Path:
    """The tiny BPE dressed as Llama-3.1: its special tokens, a BOS prepended on every plain
    encode (TemplateProcessing, as Llama-3.1's tokenizer.json does) and its chat template."""
    raw = Tokenizer.from_file(str(TINY_TOKENIZER_PATH))
    raw.add_special_tokens([BOS, "<|start_header_id|>", "<|end_header_id|>", EOT])
    raw.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, raw.token_to_id(BOS))])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOT, pad_token="<pad>",
                                  model_max_length=1 << 30)
    if chat:
        tok.chat_template = LLAMA31_CHAT
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory) -> Path:
    return _llama31_like(tmp_path_factory.mktemp("ckpt") / "Tiny-3.1-8B-Instruct")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return _llama31_like(tmp_path_factory.mktemp("ckpt") / "Tiny-3.1-8B")


# --- 1. BOS: the harness feeds exactly the ids the length fit counted ------------------------

def test_harness_feeds_the_bos_the_fit_counted_and_the_cli_writes_the_same_ids(base_dir, tmp_path) -> None:
    tok = load_tokenizer(base_dir)
    bos = tok.convert_tokens_to_ids(BOS)
    samples = harness.build_samples("ruler/niah_single_1", 1024, {"n": 2, "seed": 3}, tok, model=str(base_dir))
    out = tmp_path / "niah.jsonl"
    assert data_ruler_main(["--task", "niah_single_1", "--length", str(1024 - 128), "--n", "2", "--seed", "3",
                            "--tokenizer", str(base_dir), "--out", str(out), "--ids"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for sample, row in zip(samples, rows, strict=True):
        assert sample.input_ids == row["input_ids"]  # `segbench data ruler` and the cell agree
        assert sample.input_ids[0] == bos and sample.input_ids.count(bos) == 1
        assert sample.input_ids[1:] == tok(row["input"], add_special_tokens=False)["input_ids"]
        assert len(sample.input_ids) == row["length"] == count_tokens(tok, row["input"]) <= 1024 - 128
        assert not row["chat_template"]  # a base checkpoint: RULER's base template


# --- 2. CWE: short-context settings only when max_seq_length (prompt + 120) < 4096 ----------

CWE_EXAMPLE_ANSWER = ("Question: What are the 10 most common words in the above list? Answer: The top 10 words "
                      "that appear most often in the list are: 1. delightful 2. fluffy 3. hill 4. lantern "
                      "5. cough 6. compare 7. area 8. wooden 9. fuzzy 10. stone\nBelow is a numbered list")


def _cwe_counts(text: str) -> Counter:
    return Counter(re.findall(r"\d+\. (\S+)", text))


@pytest.mark.parametrize("context,example_words,example_counts,task_counts", [
    (4096, 40, (10, 3), (30, 3)),  # RULER's 4K cell: x30/x3 with a 40-word example
    (4095, 20, (3, 1), (6, 1)),  # just below: RULER's short-context settings
])
def test_cwe_settings_follow_max_seq_length(context, example_words, example_counts, task_counts) -> None:
    s = generate("cwe", context - 120, 1, load_tokenizer("tiny"), seed=0)[0]
    example, task = s["input"].split("\nBelow is a numbered list of words.", 1)
    assert CWE_EXAMPLE_ANSWER in s["input"]  # frozen: "are: 1." (RULER main; its 2024 code wrote "are:1.")
    example_list = example.split("\n")[1]
    counts = _cwe_counts(example_list)
    assert len(counts) == example_words and sorted(set(counts.values()), reverse=True) == list(example_counts)
    task_list = task.split("\n")[1]
    counts = _cwe_counts(task_list)
    # (the length fit trims the last uncommon word's copies, so a single one may have fewer)
    assert sorted(set(counts.values()), reverse=True)[:2] == list(task_counts)
    assert {w for w, c in counts.items() if c == task_counts[0]} == set(s["outputs"])
    assert s["input"].endswith("\nQuestion: What are the 10 most common words in the above list? Answer: The top "
                               "10 words that appear most often in the list are:")


# --- 3. VT: RULER's in-context example, unchanged, re-drawn per sample ----------------------

VT_HEAD = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
           "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n")
VT_EXAMPLE_TAIL = {  # frozen: the end of sample 0's and sample 1's example, and the task's start
    0: ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
        "Question: Find all variables that are assigned the value 61078 in the text above. Answer: According to "
        "the chain(s) of variable assignment in the text above, 5 variables are assigned the value 61078, they "
        "are:  OYV NNX ZHC CUV IVD\n\nMemorize and track the chain(s) of variable assignment hidden in the "
        "following text.\n\n"),
    1: ("Question: Find all variables that are assigned the value 20572 in the text above. Answer: According to "
        "the chain(s) of variable assignment in the text above, 5 variables are assigned the value 20572, they "
        "are:  WDP CXG TQX HUS PSO\n\nMemorize and track the chain(s) of variable assignment hidden in the "
        "following text.\n\n"),
}


def test_vt_example_is_rulers_template_unchanged_with_names_redrawn_per_sample() -> None:
    tok = load_tokenizer("tiny")
    samples = generate("vt", 1024 - 30, 2, tok, seed=0)
    examples = []
    for i, s in enumerate(samples):
        text = s["input"]
        assert text.startswith(VT_HEAD)  # no leading space; the template's newlines kept
        assert VT_EXAMPLE_TAIL[i] in text
        example = text[: text.index("\n\nMemorize and track") + 1]
        # The example: whole noise lines and its chain, one statement per line, RULER-style.
        lines = example.split("\n")[2:-2]
        chain = [ln for ln in lines if ln.startswith("VAR ")]
        assert len(chain) == 5 and all(ln == ruler_config_noise() or ln.startswith("VAR ") for ln in lines)
        names = re.findall(r"VAR ([A-Z]{3}) =", example)
        value = re.search(r"VAR [A-Z]{3} = (\d+)$", "\n".join(chain), re.M).group(1)
        assert example.endswith(f"value {value}, they are:  {' '.join(names)}\n")
        assert count_tokens(tok, example.rsplit(" Answer:", 1)[0], add_special_tokens=False) <= 500
        examples.append((names, value))
    assert examples[0][0] != examples[1][0] and examples[0][1] != examples[1][1]  # re-drawn per sample
    assert "12345" not in samples[0]["input"]  # RULER's placeholder root never reaches the model


def ruler_config_noise() -> str:
    from segbench.accuracy.textgen import NOISE_SENTENCE

    return NOISE_SENTENCE


def test_vt_answer_prefix_is_rulers_current_version() -> None:
    s = generate("vt", 1024 - 30, 1, load_tokenizer("tiny"), seed=0)[0]
    assert s["answer_prefix"] == (" Answer: According to the chain(s) of variable assignment in the text above, "
                                  "5 variables are assigned the value 33691, they are: ")
    assert "assgined" not in s["input"] and "2025-05-13" in ruler_config.RULER_VERSION


# --- 5. chat templates for instruct checkpoints ---------------------------------------------

def test_chat_template_default_follows_the_model_family(instruct_dir, base_dir) -> None:
    assert default_chat_template(instruct_dir, load_tokenizer(instruct_dir))
    assert not default_chat_template(base_dir, load_tokenizer(base_dir))  # base: RULER's base template
    assert not default_chat_template("tiny-llama", load_tokenizer("tiny"))
    no_template = PreTrainedTokenizerFast(tokenizer_file=str(TINY_TOKENIZER_PATH))
    assert not default_chat_template("Foo-7B-Instruct", no_template)
    with pytest.raises(NoChatTemplate, match="has no chat template"):
        resolve_chat_template(True, "Foo-7B-Instruct", no_template)
    assert resolve_chat_template(False, instruct_dir, load_tokenizer(instruct_dir)) is False


def test_ruler_in_a_llama31_chat_template(instruct_dir, tmp_path) -> None:
    tok = load_tokenizer(instruct_dir)
    bos = tok.convert_tokens_to_ids(BOS)
    samples = harness.build_samples("ruler/niah_single_1", 1024, {"n": 1, "seed": 0}, tok, model=str(instruct_dir))
    plain = generate("niah_single_1", 1024 - 128, 1, tok, seed=0)[0]
    s = samples[0]
    assert s.extra["chat_template"] and s.input_ids[0] == bos and s.input_ids.count(bos) == 1  # the template's BOS only
    text = tok.decode(s.input_ids)
    assert text.startswith(CHAT_HEAD + "A special magic number is hidden within the following text.")
    # The answer prefix, stripped, opens the assistant turn (NeMo-Skills' RULER prefill).
    query = re.search(r"special magic number for (\S+) mentioned in the provided text\?", text).group(1)
    assert text.endswith(f"mentioned in the provided text?{CHAT_ASSISTANT}The special magic number for {query} "
                         "mentioned in the provided text is")
    assert s.answer_prefix == plain["answer_prefix"].strip()
    assert len(s.input_ids) <= 1024 - 128
    out = tmp_path / "chat.jsonl"  # the CLI picks the same default and writes the same ids
    assert data_ruler_main(["--task", "niah_single_1", "--length", "896", "--n", "1", "--tokenizer",
                            str(instruct_dir), "--out", str(out), "--ids"]) == 0
    row = json.loads(out.read_text())
    assert row["chat_template"] and row["input_ids"] == s.input_ids == sample_token_ids(tok, row)


def test_vt_and_cwe_examples_stay_in_the_user_turn(instruct_dir) -> None:
    tok = load_tokenizer(instruct_dir)
    vt = generate("vt", 1024 - 30, 1, tok, seed=0, chat_template=True)[0]
    assert vt["input"].startswith(CHAT_HEAD + "Memorize and track the chain(s) of variable assignment hidden in the "
                                  "following text.\n\nThe grass is green.")
    value = re.search(r"value (\d+), they are:$", vt["input"]).group(1)
    assert vt["input"].count("they are:") == 2  # the example's, in the user turn, and the task's
    assert vt["input"].endswith(f"in the text above.{CHAT_ASSISTANT}Answer: According to the chain(s) of variable "
                                f"assignment in the text above, 5 variables are assigned the value {value}, they are:")
    cwe = generate("cwe", 4096 - 120, 1, tok, seed=0, chat_template=True)[0]
    assert CWE_EXAMPLE_ANSWER in cwe["input"] and cwe["input"].count(EOT) == 2  # system and user turns
    assert len(sample_token_ids(tok, cwe)) == cwe["length"] <= 4096 - 120


def test_chat_template_true_without_one_is_unsupported_and_a_cli_error(base_dir, tmp_path, capsys) -> None:
    no_chat = _llama31_like(tmp_path / "NoChat-Instruct", chat=False)
    with pytest.raises(Unsupported, match="no chat template"):
        harness.build_samples("ruler/vt", 1024, {"n": 1, "chat_template": True}, load_tokenizer(no_chat),
                              model=str(no_chat))
    assert data_ruler_main(["--task", "vt", "--length", "994", "--n", "1", "--tokenizer", str(no_chat),
                            "--out", str(tmp_path / "x.jsonl"), "--chat-template", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat template" in err[0]


# --- 4. LongBench-E, LongBench v2's scorers, jieba, x100 ------------------------------------

def _fake_run_once(texts: list[str], tok):
    """run_once stand-in: sample i 'generates' texts[i] (an empty string: EOS at once)."""
    calls = iter(texts)

    def run_once(method, model, ids, decode_tokens, device, eos_id=None, keep=0, nvml=None):
        text = next(calls)
        return {"output_token_ids": tok(text, add_special_tokens=False)["input_ids"] if text else [], "ttft_s": 0.01}

    return run_once


def _cell(task: str, options: dict, context_len: int = 2048):
    return SimpleNamespace(model="tiny-llama", task=task, task_options=options, context_len=context_len)


def test_longbench_e_scores_each_length_bucket(tmp_path) -> None:
    rows = [{"input": f"Question {i}?", "context": f"Passage {i}.", "answers": [f"Answer{i}"], "length": length,
             "all_classes": None, "dataset": "hotpotqa_e", "language": "en", "_id": str(i)}
            for i, length in enumerate([120, 3999, 4000, 7999, 8000, 250, 12000])]
    (tmp_path / "hotpotqa_e.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    options = {"n": 2, "seed": 0, "data_dir": str(tmp_path)}
    samples = harness.build_samples("longbench_e/hotpotqa", 2048, options, load_tokenizer("tiny"))
    # n per bucket, in file order: 120, 3999 | 4000, 7999 | 8000, 12000 (250 is the third 0-4k one)
    assert [s.extra["length"] for s in samples] == [120, 3999, 4000, 7999, 8000, 12000]
    tok = load_tokenizer("tiny")
    run_once = _fake_run_once(["Answer0", "nothing", "Answer2", "Answer3", "no", "no"], tok)
    fields, _, predictions = harness.run_task(_cell("longbench_e/hotpotqa", options), None, None, "cpu", run_once)
    assert (fields["score_0_4k"], fields["score_4_8k"], fields["score_8k_plus"]) == (0.5, 1.0, 0.0)
    assert fields["n"] == 6 and fields["score"] == pytest.approx(0.5)
    assert [p["bucket"] for p in predictions] == ["0-4k", "0-4k", "4-8k", "4-8k", "8k+", "8k+"]


def test_longbench_e_is_a_suite_task_kind(tmp_path) -> None:
    from segbench.accuracy.longbench_config import LONGBENCH_E_DATASETS
    from segbench.suite import load_suite

    from .helpers import write_suite

    path = write_suite(tmp_path, latency=False, tasks=[{"benchmark": "longbench_e", "n": 3, "data_dir": "lb"}])
    cells = load_suite(path).cells()
    assert [c.task for c in cells] == [f"longbench_e/{d}" for d in LONGBENCH_E_DATASETS]
    assert cells[0].task_options["n"] == 3 and cells[0].task_options["chat_template"] is None
    bad = write_suite(tmp_path, name="bad", tasks=[{"benchmark": "ruler", "scorer": "strict"}])
    from segbench.errors import UserError

    with pytest.raises(UserError, match="longbench_v2 only"):
        load_suite(bad)


def test_longbench_v2_official_scorer_skips_empty_outputs_strict_counts_them(tmp_path) -> None:
    record = {"_id": "1", "domain": "d", "sub_domain": "s", "difficulty": "easy", "length": "short",
              "question": "Which?", "choice_A": "one", "choice_B": "two", "choice_C": "three", "choice_D": "four",
              "answer": "B", "context": "The text."}
    (tmp_path / "data.json").write_text(json.dumps([record, dict(record, _id="2"), dict(record, _id="3")]))
    tok = load_tokenizer("tiny")
    outputs = ["", "The correct answer is (B)", " "]  # an empty output, a right one, a blank (not empty) one
    results = {}
    for scorer in ("official", "strict"):
        options = {"n": 3, "data_dir": str(tmp_path), "scorer": scorer}
        fields, _, predictions = harness.run_task(_cell("longbench_v2/longbench_v2", options), None, None, "cpu",
                                                  _fake_run_once(outputs, tok))
        results[scorer] = (fields["n"], fields["score"], [p["score"] for p in predictions])
    # Official pred.py: `if output == '': continue` (never written, so result.py never counts it);
    # whitespace is not empty: it is written, extracts no answer and is wrong.
    assert results["official"] == (2, 0.5, [None, 1.0, 0.0])
    assert results["strict"] == (3, pytest.approx(1 / 3), [0.0, 1.0, 0.0])


def test_jieba_is_in_the_accuracy_extra_and_the_chinese_metrics_run() -> None:
    tomllib = pytest.importorskip("tomllib")  # stdlib from Python 3.11
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["accuracy"]
    assert any(req.startswith("jieba") for req in extra)
    from segbench.accuracy.scoring import longbench_sample_score

    assert longbench_sample_score("multifieldqa_zh", "北京是中国的首都", ["北京是中国的首都"]) == 1.0
    assert 0.0 < longbench_sample_score("dureader", "北京是首都", ["北京是中国的首都"]) < 1.0


def test_report_shows_scores_x100_and_longbench_e_buckets() -> None:
    from segbench.report import display_frame
    from segbench.schema import empty_row

    def row(**kw):
        return {**empty_row(), "label": "full", "context_len": 4096, "status": "ok", "repeat_group": 0,
                "model_trained": True, **kw}

    df = pd.DataFrame([
        row(task="ruler/vt", score=0.25, score_ci_low=0.05, score_ci_high=0.7),
        row(task="longbench_e/hotpotqa", score=0.2324, score_ci_low=0.1, score_ci_high=0.4,
            score_0_4k=0.3, score_4_8k=0.2, score_8k_plus=None),
    ])
    shown = display_frame(df)
    assert list(shown["score x100 [95% CI]"]) == ["25.00 [5.00,70.00]", "23.24 [10.00,40.00]"]
    assert list(shown["0-4k x100"]) == ["", "30.00"] and list(shown["8k+ x100"]) == ["", ""]
    assert df["score"].max() <= 1.0  # the stored value stays a fraction
