"""Scorers with the official semantics of RULER, LongBench and LongBench v2.

Names match the official functions, and so do their scales: RULER's `string_match_*` and
LongBench's `longbench_score` return percentages rounded to 2 decimals, as the official
scripts print them; the per-sample functions return fractions in [0, 1].

RULER (NVIDIA/RULER `scripts/eval/synthetic/constants.py`, `evaluate.py`):
  string_match_all  - per sample, the fraction of references found in the prediction
                      (case-insensitive substring); for niah, vt, cwe, fwe.
  string_match_part - per sample, 1 if any reference is found; for qa.
  (lm-eval's RULER port averages the found fraction for qa as well, so its qa numbers are
  not comparable with the official ones.)

LongBench (THUDM/LongBench `metrics.py`, `eval.py`): per-sample metric, max over the
references, dataset-specific first-line truncation, mean x 100.

LongBench v2 (`pred.py` `extract_answer`, `result.py`): accuracy of the extracted choice.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from segbench.accuracy.longbench_config import DATASET2METRIC, FIRST_LINE_ONLY
from segbench.accuracy.rouge_l import rouge_l_f
from segbench.accuracy.stats import bootstrap_ci, wilson_interval

__all__ = [
    "bootstrap_ci", "wilson_interval",
    "postprocess_pred", "string_match_all", "string_match_part",
    "string_match_all_per_sample", "string_match_part_per_sample", "RULER_METRICS",
    "normalize_answer", "normalize_zh_answer", "f1_score", "qa_f1_score", "qa_f1_zh_score",
    "rouge_score", "rouge_zh_score", "classification_score", "retrieval_score", "retrieval_zh_score",
    "count_score", "code_sim_score", "LONGBENCH_METRICS", "longbench_preprocess",
    "longbench_sample_score", "longbench_score", "longbench_score_per_sample", "longbench_e_score",
    "extract_answer", "longbench_v2_judge", "longbench_v2_accuracy",
]

# --- RULER ---------------------------------------------------------------------------------

_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str, answer_prefix: str | None = None) -> str:
    """RULER's prediction clean-up: strip, turn control characters into newlines, strip.

    With `answer_prefix`, a leading echo of it is removed first (some models repeat the
    prefix they were primed with). RULER itself does not do this; it can't change a string
    match unless a reference is inside the prefix, which no RULER task has.
    """
    text = prediction.strip()
    if answer_prefix:
        prefix = answer_prefix.strip()
        if prefix and text.lower().startswith(prefix.lower()):
            text = text[len(prefix):]
    return _NON_PRINTABLE.sub("\n", text).strip()


def _check_pairs(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")
    if any(isinstance(r, str) for r in refs):
        raise TypeError("refs must be a list of reference *lists*, one list per prediction")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every sample needs at least one reference")


def string_match_all_per_sample(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    _check_pairs(preds, refs)
    return [sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs, strict=True)]


def string_match_part_per_sample(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float]:
    _check_pairs(preds, refs)
    return [float(any(r.lower() in p.lower() for r in ref)) for p, ref in zip(preds, refs, strict=True)]


def ruler_sample_score(metric: str, prediction: str, references: Sequence[str]) -> float:
    """One RULER sample as RULER's evaluate.py scores it: postprocessed prediction, then its task's metric."""
    per_sample = string_match_part_per_sample if metric == "string_match_part" else string_match_all_per_sample
    return per_sample([postprocess_pred(prediction)], [references])[0]


def _percent(per_sample: list[float]) -> float:
    if not per_sample:
        raise ValueError("no predictions to score")
    return round(sum(per_sample) / len(per_sample) * 100, 2)


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references found, x100, rounded to 2 decimals."""
    return _percent(string_match_all_per_sample(preds, refs))


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Share of samples where any reference is found, x100, rounded to 2 decimals."""
    return _percent(string_match_part_per_sample(preds, refs))


RULER_METRICS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], float]] = {
    "string_match_all": string_match_all, "string_match_part": string_match_part}

# --- LongBench per-sample metrics ----------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace
    (in that order, as SQuAD's and LongBench's normalizer)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_PUNCT = frozenset(string.punctuation)
_ZH_PUNCT = frozenset(string.punctuation + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def normalize_zh_answer(s: str) -> str:
    """Lowercase, drop ASCII and CJK punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in s.lower() if ch not in _ZH_PUNCT).split())


def f1_score(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Token-multiset F1 between two token lists."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_: object) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba
    except ImportError:
        raise ModuleNotFoundError("the Chinese LongBench metrics need `jieba` (pip install jieba)") from None
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh_score(prediction: str, ground_truth: str, **_: object) -> float:
    pred = [t for t in (normalize_zh_answer(t) for t in _jieba_cut(prediction)) if t]
    gold = [t for t in (normalize_zh_answer(t) for t in _jieba_cut(ground_truth)) if t]
    return f1_score(pred, gold)


def rouge_score(prediction: str, ground_truth: str, backend: str = "longbench", **_: object) -> float:
    """ROUGE-L F in [0, 1].

    backend="longbench" (default): exactly what LongBench computes (the `rouge` package's
    summary-level rouge-l; see `segbench.accuracy.rouge_l` for how it differs).
    backend="rouge-score": Google's `rouge-score` rougeL F-measure (lowercased, punctuation
    stripped, no stemming): a cleaner metric, but not comparable with LongBench tables.
    """
    if backend == "longbench":
        return rouge_l_f(prediction, ground_truth)
    if backend == "rouge-score":
        from rouge_score import rouge_scorer

        return rouge_scorer.RougeScorer(["rougeL"]).score(ground_truth, prediction)["rougeL"].fmeasure
    raise ValueError(f"unknown rouge backend {backend!r} (longbench | rouge-score)")


def rouge_zh_score(prediction: str, ground_truth: str, **_: object) -> float:
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


def classification_score(prediction: str, ground_truth: str, all_classes: Sequence[str] = (), **_: object) -> float:
    """1/k if the true class is among the k class names found in the prediction, else 0.

    Class names that are substrings of the true class (and not it) are dropped first, with
    LongBench's quirk kept: it removes them from the list it is iterating over, so the name
    right after a removed one is never checked. (Its fuzzy-match fallback for "no class
    found" is unreachable in the official code, so none is found scores 0.)
    """
    found = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(found):
        name = found[i]
        if name in ground_truth and name != ground_truth:
            found.remove(name)
        i += 1
    return 1.0 / len(found) if ground_truth in found else 0.0


def _share_of_numbers_equal(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, ground_truth: str, **_: object) -> float:
    """Share of the numbers in the prediction that equal the "Paragraph N" of the answer."""
    match = re.search(r"Paragraph (\d+)", ground_truth)
    if match is None:
        raise ValueError(f"retrieval answer has no 'Paragraph N': {ground_truth!r}")
    return _share_of_numbers_equal(prediction, match.group(1))


def retrieval_zh_score(prediction: str, ground_truth: str, **_: object) -> float:
    match = re.search(r"段落(\d+)", ground_truth)
    if match is None:
        raise ValueError(f"retrieval answer has no '段落N': {ground_truth!r}")
    return _share_of_numbers_equal(prediction, match.group(1))


def count_score(prediction: str, ground_truth: str | int, **_: object) -> float:
    """Share of the numbers in the prediction that equal the true count."""
    return _share_of_numbers_equal(prediction, str(ground_truth))


def _fuzzywuzzy_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's `fuzz.ratio`: 100 for equal strings, 0 if one is empty, else the rounded
    Indel similarity (what fuzzywuzzy computes with python-Levenshtein installed)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    from rapidfuzz import fuzz

    return int(round(fuzz.ratio(a, b)))


def code_sim_score(prediction: str, ground_truth: str, **_: object) -> float:
    """Similarity of the first line of the prediction that isn't a comment or a code fence
    (no "`", "#" or "//" in it) to the true next line."""
    line = next((ln for ln in prediction.lstrip("\n").split("\n")
                 if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return _fuzzywuzzy_ratio(line, ground_truth) / 100


LONGBENCH_METRICS: dict[str, Callable[..., float]] = {
    "qa_f1_score": qa_f1_score, "qa_f1_zh_score": qa_f1_zh_score, "rouge_score": rouge_score,
    "rouge_zh_score": rouge_zh_score, "classification_score": classification_score,
    "retrieval_score": retrieval_score, "retrieval_zh_score": retrieval_zh_score,
    "count_score": count_score, "code_sim_score": code_sim_score,
}

# --- LongBench aggregate -------------------------------------------------------------------


def longbench_preprocess(dataset: str, prediction: str) -> str:
    """For trec, triviaqa, samsum and lsht only the first line of the answer is scored."""
    if _base_dataset(dataset) in FIRST_LINE_ONLY:
        return prediction.lstrip("\n").split("\n")[0]
    return prediction


def _base_dataset(dataset: str) -> str:
    return dataset[:-2] if dataset.endswith("_e") else dataset  # LongBench-E subsets


def longbench_sample_score(dataset: str, prediction: str, answers: Sequence[str],
                           all_classes: Sequence[str] | None = None) -> float:
    """One sample's score in [0, 1]: the dataset's metric, best over the reference answers."""
    base = _base_dataset(dataset)
    if base not in DATASET2METRIC:
        raise ValueError(f"unknown LongBench dataset {dataset!r}")
    metric = LONGBENCH_METRICS[DATASET2METRIC[base]]
    prediction = longbench_preprocess(base, prediction)
    score = 0.0
    for answer in answers:
        score = max(score, metric(prediction, answer, all_classes=all_classes or ()))
    return score


def longbench_score_per_sample(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                               all_classes: Sequence[str] | None = None) -> list[float]:
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    return [longbench_sample_score(dataset, p, a, all_classes) for p, a in zip(predictions, answers, strict=True)]


def longbench_score(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                    all_classes: Sequence[str] | None = None) -> float:
    """LongBench's `scorer`: mean per-sample score x100, rounded to 2 decimals."""
    return _percent(longbench_score_per_sample(dataset, predictions, answers, all_classes))


def longbench_e_score(dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]],
                      lengths: Sequence[int], all_classes: Sequence[str] | None = None) -> dict[str, float | None]:
    """LongBench-E's `scorer_e`: the score per length bucket (<4000, 4000-7999, >=8000 words
    of context, the dataset's `length` field); an empty bucket is None (official: NaN)."""
    per_sample = longbench_score_per_sample(dataset, predictions, answers, all_classes)
    buckets: dict[str, list[float]] = {"0-4k": [], "4-8k": [], "8k+": []}
    for score, length in zip(per_sample, lengths, strict=True):
        key = "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"
        buckets[key].append(score)
    return {k: (round(100 * sum(v) / len(v), 2) if v else None) for k, v in buckets.items()}


# --- LongBench v2 --------------------------------------------------------------------------

_V2_PATTERNS = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))


def extract_answer(response: str) -> str | None:
    """The chosen letter from "The correct answer is (B)" (or "... is B"), ignoring markdown
    asterisks; None when the response has neither form."""
    response = response.replace("*", "")
    for pattern in _V2_PATTERNS:
        match = pattern.search(response)
        if match:
            return match.group(1)
    return None


def longbench_v2_judge(response: str, answer: str) -> bool:
    return extract_answer(response.strip()) == answer


def longbench_v2_accuracy(responses: Sequence[str], answers: Sequence[str], compensated: bool = False) -> float:
    """Accuracy x100 rounded to 1 decimal, as LongBench v2's `result.py` reports it.

    compensated=True scores a response with no extractable answer as 0.25 (chance), the
    official script's optional setting.
    """
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    if not responses:
        raise ValueError("no responses to score")
    total = 0.0
    for response, answer in zip(responses, answers, strict=True):
        pred = extract_answer(response.strip())
        total += 0.25 if (compensated and pred is None) else float(pred == answer)
    return round(100 * total / len(responses), 1)
