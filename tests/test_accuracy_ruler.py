"""RULER generation: lengths hit in the evaluating tokenizer, reproducible, answers planted and
checkable by the official scorers, QA from local files only."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from segbench.accuracy.errors import DataUnavailable
from segbench.accuracy.fit import LengthError
from segbench.accuracy.ruler import RULER_TASKS, generate, sample_token_ids
from segbench.accuracy.scoring import postprocess_pred, string_match_all, string_match_part
from segbench.accuracy.textgen import essay_sentence
from segbench.accuracy.tokenizer import count_tokens, load_tokenizer

SELF_CONTAINED = tuple(t for t in RULER_TASKS if not t.startswith("qa_"))
KEYS = {"task", "index", "input", "outputs", "length", "length_target", "answer_prefix", "max_new_tokens",
        "haystack", "metric", "seed", "chat_template"}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _check_lengths(samples: list[dict], tok, length: int) -> None:
    for s in samples:
        assert set(s) == KEYS
        measured = len(sample_token_ids(tok, s))
        assert measured == s["length"], "recorded length must be the evaluating tokenizer's count"
        if not s["chat_template"]:
            assert measured == count_tokens(tok, s["input"])  # the tokenizer's own special tokens count
        assert measured <= length, "a prompt may never exceed its target"
        assert measured >= 0.99 * length, f"{s['task']}: {measured} is more than 1% short of {length}"
        assert s["input"].endswith(s["answer_prefix"]) and s["length_target"] == length


def test_task_list_is_rulers_thirteen() -> None:
    assert RULER_TASKS == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
                           "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery",
                           "vt", "cwe", "fwe", "qa_1", "qa_2")


@pytest.mark.parametrize("task", SELF_CONTAINED)
def test_self_contained_tasks_fit_4k(task: str, tok) -> None:
    _check_lengths(generate(task, 4096, 2, tok, seed=1), tok, 4096)


@pytest.mark.parametrize("task,length", [
    ("niah_single_2", 32768), ("niah_multikey_3", 32768), ("cwe", 32768), ("vt", 32768),
    ("niah_multikey_2", 8192), ("fwe", 16384),
])
def test_long_targets_fit(task: str, length: int, tok) -> None:
    _check_lengths(generate(task, length, 1, tok, seed=3), tok, length)


def test_same_seed_same_samples_other_seed_other_samples(tok) -> None:
    a = generate("niah_multikey_2", 4096, 2, tok, seed=7)
    assert a == generate("niah_multikey_2", 4096, 2, tok, seed=7)
    b = generate("niah_multikey_2", 4096, 2, tok, seed=8)
    assert [s["outputs"] for s in a] != [s["outputs"] for s in b]
    assert a[0]["input"] != a[1]["input"], "samples within one call differ"


def test_answer_formats_and_generation_budgets(tok) -> None:
    s = generate("niah_single_3", 4096, 1, tok)[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s["outputs"][0])
    assert s["input"].startswith("A special magic uuid is hidden within the following text.")
    assert s["answer_prefix"].endswith("mentioned in the provided text is")
    assert (s["max_new_tokens"], s["metric"], s["haystack"]) == (128, "string_match_all", "generated-essay")
    mv = generate("niah_multivalue", 4096, 1, tok)[0]
    assert len(mv["outputs"]) == 4 and all(re.fullmatch(r"\d{7}", v) for v in mv["outputs"])
    assert mv["input"].startswith("Some special magic numbers are hidden")
    mq = generate("niah_multiquery", 4096, 1, tok)[0]
    assert len(mq["outputs"]) == 4 and ", and " in mq["answer_prefix"]
    assert [generate(t, 4096, 1, tok)[0]["max_new_tokens"] for t in ("vt", "cwe", "fwe")] == [30, 120, 50]


@pytest.mark.parametrize("task", [t for t in SELF_CONTAINED if t.startswith("niah")])
def test_planted_needles_are_found_by_the_scorer(task: str, tok) -> None:
    for s in generate(task, 4096, 2, tok, seed=5):
        for value in s["outputs"]:
            assert f"is: {value}." in s["input"]  # "One of the special magic ... for KEY is: VALUE."
        gold = " ".join(s["outputs"])
        assert string_match_all([postprocess_pred(" " + gold + "\n")], [s["outputs"]]) == 100.0
        assert string_match_all(["1234567 and 7654321"], [s["outputs"]]) == 0.0


def test_variable_tracking_chain_is_in_the_prompt(tok) -> None:
    s = generate("vt", 4096, 1, tok, seed=2)[0]
    names = s["outputs"]
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = re.search(r"the value (\d+), they are", s["answer_prefix"]).group(1)
    assert f"VAR {names[0]} = {value}" in s["input"]
    for a, b in zip(names, names[1:], strict=False):
        assert f"VAR {b} = VAR {a} " in s["input"]
    assert string_match_all([" ".join(names)], [names]) == 100.0
    assert string_match_all([" ".join(names[:2])], [names]) == 40.0  # 2 of 5 found


def test_common_words_answer_is_the_top_ten_of_the_list(tok) -> None:
    s = generate("cwe", 8192, 1, tok, seed=4)[0]
    task_list = s["input"].rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
    counts = Counter(re.findall(r"\d+\. (\S+)", task_list))
    top = counts.most_common(11)
    assert {w for w, _ in top[:10]} == set(s["outputs"])
    assert top[9][1] > top[10][1] and top[0][1] == 30  # RULER: 30 repeats vs 3
    assert string_match_all([", ".join(s["outputs"])], [s["outputs"]]) == 100.0


def test_frequent_words_answer_is_the_top_three(tok) -> None:
    s = generate("fwe", 4096, 1, tok, seed=4)[0]
    text = s["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0]
    top = [w for w, _ in Counter(text.split()).most_common() if w != "..."][:3]
    assert top == s["outputs"]


def test_essay_file_is_used_when_given(tmp_path, tok) -> None:
    essay = tmp_path / "essay.json"
    essay.write_text(json.dumps({"text": "Startups are hard. Most of them fail. " * 50}))
    s = generate("niah_single_2", 4096, 1, tok, haystack_path=essay)[0]
    assert s["haystack"] == "essay" and "Startups are hard." in s["input"]
    _check_lengths([s], tok, 4096)  # the short essay repeats to reach the target
    with pytest.raises(DataUnavailable, match="haystack file not found"):
        generate("niah_single_2", 4096, 1, tok, haystack_path=tmp_path / "missing.txt")


def test_bad_arguments(tok) -> None:
    with pytest.raises(ValueError, match="unknown RULER task"):
        generate("niah_single_9", 4096, 1, tok)
    with pytest.raises(ValueError, match="positive"):
        generate("vt", 0, 1, tok)
    with pytest.raises(LengthError, match="already"):
        generate("niah_single_1", 50, 1, tok)


# --- qa_1 / qa_2 from local files ----------------------------------------------------------

def _paragraph(i: int) -> str:
    import random

    rng = random.Random(i)
    return " ".join(essay_sentence(rng) for _ in range(6))


def _write_squad(path) -> None:
    articles = []
    for a in range(12):
        paragraphs = []
        for p in range(5):
            idx = a * 5 + p
            paragraphs.append({"context": f"The marker of paragraph {idx} is Zorblat{idx}. " + _paragraph(idx), "qas": [
                {"id": f"q{idx}", "question": f"What is the marker of paragraph {idx}?", "is_impossible": False,
                 "answers": [{"text": f"Zorblat{idx}", "answer_start": 27}, {"text": f"zorblat{idx}", "answer_start": 27}]},
                {"id": f"x{idx}", "question": "Unanswerable?", "is_impossible": True, "answers": [],
                 "plausible_answers": [{"text": "nothing", "answer_start": 0}]},
            ]})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))


def _write_hotpot(path) -> None:
    items = []
    for q in range(30):
        context = [[f"Title {q}-{d}", [f"Sentence about {q}-{d}. ", _paragraph(q * 10 + d)]] for d in range(10)]
        items.append({"_id": f"h{q}", "question": f"Which title ends with {q}-3?", "answer": f"Title {q}-3",
                      "supporting_facts": [[f"Title {q}-3", 0]], "context": context, "type": "bridge", "level": "easy"})
    path.write_text(json.dumps(items))


def test_qa_needs_its_local_files(tmp_path, tok) -> None:
    with pytest.raises(DataUnavailable, match="dev-v2.0.json"):
        generate("qa_1", 4096, 1, tok, data_dir=tmp_path)
    with pytest.raises(DataUnavailable, match="hotpot_dev_distractor_v1.json"):
        generate("qa_2", 4096, 1, tok, data_dir=None)
    (tmp_path / "dev-v2.0.json").write_text("{not json")
    with pytest.raises(DataUnavailable, match="can't be read"):
        generate("qa_1", 4096, 1, tok, data_dir=tmp_path)


def test_squad_qa_from_a_local_file(tmp_path, tok) -> None:
    _write_squad(tmp_path / "dev-v2.0.json")
    samples = generate("qa_1", 4096, 3, tok, data_dir=tmp_path)
    _check_lengths(samples, tok, 4096)
    for i, s in enumerate(samples):
        assert s["outputs"] == [f"Zorblat{i}", f"zorblat{i}"]  # sample i asks answerable question i
        assert f"Question: What is the marker of paragraph {i}?" in s["input"]
        assert f"The marker of paragraph {i} is Zorblat{i}." in s["input"]  # its paragraph is always there
        assert "Document 1:\n" in s["input"] and s["answer_prefix"] == " Answer:"
        assert (s["max_new_tokens"], s["metric"]) == (32, "string_match_part")
        assert string_match_part([f"zorblat{i}"], [s["outputs"]]) == 100.0
    with pytest.raises(DataUnavailable, match="runs out"):
        generate("qa_1", 65536, 1, tok, data_dir=tmp_path)


def test_hotpot_qa_from_a_local_file(tmp_path, tok) -> None:
    _write_hotpot(tmp_path / "hotpotqa.json")  # RULER's renamed copy is accepted too
    samples = generate("qa_2", 4096, 2, tok, data_dir=tmp_path)
    _check_lengths(samples, tok, 4096)
    for i, s in enumerate(samples):
        assert s["outputs"] == [f"Title {i}-3"]
        assert all(f"Title {i}-{d}\nSentence about {i}-{d}." in s["input"] for d in range(10))


# --- other tokenizers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_like_path(tmp_path_factory):
    """A sentencepiece-style BPE (Metaspace, no byte fallback) that prepends <s> on encode,
    saved to a folder and loaded back through the local-path route."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = __import__("random").Random(0)
    corpus = [" ".join(essay_sentence(rng) for _ in range(5)) for _ in range(400)]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=list(string.printable), show_progress=False))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path_factory.mktemp("llama_like")
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=1 << 30).save_pretrained(path)
    return path


@pytest.mark.parametrize("task", ["niah_single_3", "niah_multikey_3", "vt", "cwe"])
def test_lengths_are_measured_in_the_models_own_tokenizer(task: str, llama_like_path) -> None:
    tok = load_tokenizer(llama_like_path)
    samples = generate(task, 4096, 1, str(llama_like_path), seed=2)
    ids = tok(samples[0]["input"])["input_ids"]
    assert ids[0] == tok.bos_token_id  # the BOS it adds is part of the count
    _check_lengths(samples, tok, 4096)


@pytest.mark.parametrize("task", ["niah_multikey_3", "niah_single_3", "qa_2"])
def test_short_targets_stay_within_one_percent(task: str, tok, tmp_path) -> None:
    # A UUID is ~35 tiny-BPE tokens; the haystack is cut inside it rather than before it.
    _write_hotpot(tmp_path / "hotpot_dev_distractor_v1.json")
    _check_lengths(generate(task, 2048, 2, tok, data_dir=tmp_path), tok, 2048)
