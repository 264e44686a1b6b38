"""Accuracy cells: generate or load the samples of one task, run them through a method, score them.

Runs inside the cell process (segbench.worker) with the model already built and the method set
up. Each sample is one prefill + greedy decode through the same `run_once` the latency cells use,
so accuracy rows carry TTFT and peak memory measured with the real prompt too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from segbench.accuracy import longbench, ruler, scoring
from segbench.accuracy.chat import NoChatTemplate, resolve_chat_template
from segbench.accuracy.errors import DataUnavailable
from segbench.accuracy.ruler_config import TASK_SPECS
from segbench.accuracy.stats import bootstrap_ci, wilson_interval
from segbench.accuracy.tokenizer import load_tokenizer
from segbench.method import Unsupported


@dataclass(frozen=True)
class Sample:
    index: int
    input_ids: list[int]
    references: list[str]
    max_new_tokens: int
    answer_prefix: str = ""
    extra: dict | None = None


def tokenizer_for(model: str):
    """A local checkpoint brings its own tokenizer; random-weight presets use the shipped tiny BPE."""
    from segbench.models import is_local_path

    return load_tokenizer(model if is_local_path(model) else "tiny")


# LongBench-E's length buckets (eval.py `scorer_e`: the record's `length`, in words).
LONGBENCH_E_BUCKETS = ("0-4k", "4-8k", "8k+")
BUCKET_COLUMNS = {"0-4k": "score_0_4k", "4-8k": "score_4_8k", "8k+": "score_8k_plus"}


def longbench_e_bucket(length: int) -> str:
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


def build_samples(task: str, context_len: int, options: dict, tokenizer, model: str = "tiny") -> list[Sample]:
    """The samples of one task at one context length, as token ids the model reads.

    `options` are the suite's task options (n, seed, data_dir, haystack, chat_template, scorer);
    `model` names the checkpoint, for the chat-template default of its family."""
    benchmark, name = task.split("/", 1)
    n, seed = options.get("n", 8), options.get("seed", 0)
    try:
        chat = resolve_chat_template(options.get("chat_template"), model, tokenizer)
        if benchmark == "ruler":
            max_new = TASK_SPECS[name].max_new_tokens
            # RULER's sequence length covers the answer too: the prompt gets what is left.
            raw = ruler.generate(name, context_len - max_new, n, tokenizer, seed=seed,
                                 haystack_path=options.get("haystack"), data_dir=options.get("data_dir"),
                                 chat_template=chat)
            return [
                # The ids the length fit counted (BOS included): `segbench data ruler` writes the same.
                Sample(i, ruler.sample_token_ids(tokenizer, s), list(s["outputs"]), s["max_new_tokens"],
                       s.get("answer_prefix", ""),
                       {"metric": s["metric"], "haystack": s.get("haystack"), "length": s["length"],
                        "chat_template": chat})
                for i, s in enumerate(raw)
            ]
        if benchmark in ("longbench", "longbench_e"):
            e = benchmark == "longbench_e"
            records = longbench.load_longbench(name, options.get("data_dir"), e=e)
            if e:
                # n per length bucket, in file order: LongBench-E is built to cover all three.
                taken = {b: 0 for b in LONGBENCH_E_BUCKETS}
                chosen = []
                for rec in records:
                    bucket = longbench_e_bucket(rec["length"])
                    if taken[bucket] < n:
                        taken[bucket] += 1
                        chosen.append(rec)
                records = chosen
            else:
                records = records[:n]
            out = []
            for i, rec in enumerate(records):
                built = longbench.build_longbench_input(name, rec, tokenizer, context_len - _max_new_lb(name),
                                                        use_chat_template=chat)
                extra = {"all_classes": rec.get("all_classes"), "truncated": built["truncated"],
                         "chat_template": built["chat_template"]}
                if e:
                    extra.update(length=rec["length"], bucket=longbench_e_bucket(rec["length"]))
                out.append(Sample(i, list(built["input_ids"]), list(rec["answers"]), built["max_new_tokens"],
                                  extra=extra))
            return out
        if benchmark == "longbench_v2":
            records = longbench.load_longbench_v2(options.get("data_dir"))[:n]
            out = []
            for i, rec in enumerate(records):
                built = longbench.build_longbench_v2_input(rec, tokenizer, context_len - 128, use_chat_template=chat)
                out.append(Sample(i, list(built["input_ids"]), [rec["answer"]], built.get("max_new_tokens", 128),
                                  extra={"truncated": built.get("truncated"), "chat_template": built["chat_template"]}))
            return out
    except (DataUnavailable, NoChatTemplate) as e:
        raise Unsupported(str(e)) from None
    raise Unsupported(f"unknown benchmark {benchmark!r}")


def _max_new_lb(name: str) -> int:
    from segbench.accuracy.longbench_config import DATASET2MAXLEN

    return DATASET2MAXLEN[name]


def score_sample(task: str, sample: Sample, prediction: str) -> float:
    benchmark, name = task.split("/", 1)
    if benchmark == "ruler":
        return scoring.ruler_sample_score(sample.extra["metric"], prediction, sample.references)
    if benchmark in ("longbench", "longbench_e"):
        return scoring.longbench_sample_score(name, prediction, sample.references,
                                              all_classes=(sample.extra or {}).get("all_classes"))
    return 1.0 if scoring.longbench_v2_judge(prediction, sample.references[0]) else 0.0


def skipped_by_scorer(task: str, options: dict, prediction: str) -> bool:
    """LongBench v2's official pred.py drops a question whose output is empty (`if output == '':
    continue`): it is never written, so result.py's accuracy leaves it out. `scorer: strict`
    counts it wrong instead."""
    return (task.startswith("longbench_v2/") and options.get("scorer", "official") == "official"
            and prediction == "")


def interval(scores: list[float]) -> tuple[float, float]:
    """Wilson for right/wrong scores (exact at small n), bootstrap for fractional ones."""
    if all(s in (0.0, 1.0) for s in scores):
        return wilson_interval(sum(scores), len(scores))
    return bootstrap_ci(scores)


def _mean(scores: list[float]) -> float | None:
    return statistics.fmean(scores) if scores else None


def run_task(cell, method, model, device: str, run_once, nvml=None) -> tuple[dict, list[dict], list[dict]]:
    """Score one (method, context, task) cell; returns row fields and per-sample predictions."""
    tokenizer = tokenizer_for(cell.model)
    options = dict(cell.task_options)
    samples = build_samples(cell.task, cell.context_len, options, tokenizer, model=cell.model)
    if not samples:
        raise Unsupported(f"{cell.task}: no samples")
    eos = tokenizer.eos_token_id
    scores, predictions, runs = [], [], []
    buckets: dict[str, list[float]] = {b: [] for b in LONGBENCH_E_BUCKETS}
    for s in samples:
        ids = torch.tensor([s.input_ids], dtype=torch.long, device=device)
        run = run_once(method, model, ids, s.max_new_tokens - 1, device, eos_id=eos, keep=s.max_new_tokens,
                       nvml=nvml if not runs else None)
        runs.append(run)
        generated = run["output_token_ids"]
        text = tokenizer.decode(generated, skip_special_tokens=True)
        record = {"index": s.index, "prompt_tokens": len(s.input_ids), "references": s.references,
                  "prediction": text, **(s.extra or {})}
        if skipped_by_scorer(cell.task, options, text):
            predictions.append({**record, "score": None, "skipped": "empty output (official LongBench v2)"})
            continue
        score = score_sample(cell.task, s, text)
        scores.append(score)
        if s.extra and "bucket" in s.extra:
            buckets[s.extra["bucket"]].append(score)
        predictions.append({**record, "score": score})
    low, high = interval(scores) if scores else (None, None)
    ttfts = [r["ttft_s"] for r in runs]
    fields = {
        "n": len(scores),
        "score": _mean(scores),  # a fraction in [0, 1]; reports show it x100
        "score_ci_low": low,
        "score_ci_high": high,
        "ttft_s": statistics.median(ttfts),
        "ttft_s_all": ttfts,
        "output_token_ids": runs[0]["output_token_ids"][:32],
    }
    if cell.task.startswith("longbench_e/"):
        fields.update({BUCKET_COLUMNS[b]: _mean(v) for b, v in buckets.items()})
    return fields, runs, predictions
