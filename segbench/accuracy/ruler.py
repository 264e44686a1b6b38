"""RULER's 13 tasks, generated offline and fitted to a token budget in the evaluated model's
tokenizer.

    samples = generate("niah_single_2", 8192, n=20, tokenizer="tiny", seed=0)

Every sample's prompt (`input`, which ends with `answer_prefix`) is at most `length` tokens
and, from 4K up, within 1% of it; the same arguments give the same samples. Differences from
running RULER itself, all deliberate:

- `length` is the prompt's budget. RULER's `max_seq_length` also covers the generated
  tokens; to reproduce a RULER length L exactly, pass L - max_new_tokens (settings that RULER
  picks by `max_seq_length`, CWE's repeat counts and FWE's vocabulary, use length + max_new_tokens).
- `input` is the whole prompt, answer prefix included (RULER's jsonl splits it off into its
  own field; ours keeps both, and `input.endswith(answer_prefix)`).
- The model reads `sample_token_ids(tokenizer, sample)`: the tokenizer's own special tokens
  (a Llama BOS) included, exactly the tokens `length` counts. With `chat_template=True` the
  task is the user turn of the tokenizer's chat template and the answer prefix, stripped,
  starts the assistant turn (RULER's current route through NeMo-Skills); the template writes
  its own BOS, so nothing is added to it.
- The haystack is sized to the character, ending on a word boundary where one is near,
  until the prompt is within 0.1% of the budget (RULER: steps of 25 sentences or 500 words).
- Essay tasks read `haystack_path` (RULER uses Paul Graham's essays); without one they use
  generated essay-like prose and say so in `haystack` ("generated-essay").
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from segbench.accuracy import ruler_config as rc
from segbench.accuracy.chat import NoChatTemplate, chat_prompt, has_chat_template
from segbench.accuracy.errors import DataUnavailable
from segbench.accuracy.fit import LengthError, fit_to_budget
from segbench.accuracy.ruler_config import RULER_TASKS
from segbench.accuracy.ruler_qa import QABuilder
from segbench.accuracy.ruler_synthetic import (
    CommonWordsBuilder,
    FreqWordsBuilder,
    NiahBuilder,
    Rendered,
    TaskBuilder,
    VariableTrackingBuilder,
)
from segbench.accuracy.tokenizer import count_tokens, encode, load_tokenizer

__all__ = ["RULER_TASKS", "DataUnavailable", "LengthError", "generate", "sample_token_ids"]

# A sample is never over its budget and, unless the data runs out, within this fraction of it.
LENGTH_TOLERANCE = 0.01
# The search stops once a prompt is this close (a fraction of the budget): good enough, and
# every further probe tokenizes the whole prompt again.
SEARCH_SLACK = 0.001


def _builder(spec: rc.TaskSpec, length: int, seed: int, count: Any, haystack_path: Any, data_dir: Any) -> TaskBuilder:
    if spec.family == "niah":
        return NiahBuilder(spec, length=length, seed=seed, haystack_path=haystack_path)
    if spec.family == "variable_tracking":
        return VariableTrackingBuilder(spec, length=length, seed=seed, count=partial(count, add_special_tokens=False))
    if spec.family == "common_words_extraction":
        return CommonWordsBuilder(spec, length=length, seed=seed)
    if spec.family == "freq_words_extraction":
        return FreqWordsBuilder(spec, length=length, seed=seed)
    return QABuilder(spec, length=length, seed=seed, data_dir=data_dir)


def generate(
    task: str,
    length: int,
    n: int,
    tokenizer: PreTrainedTokenizerBase | str | Path,
    seed: int = 0,
    haystack_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    chat_template: bool = False,
) -> list[dict[str, Any]]:
    """`n` samples of RULER task `task` whose prompts fit `length` tokens of `tokenizer`.

    `tokenizer` is a loaded tokenizer, "tiny"/"tiny-*" (the shipped BPE) or a local path.
    Raises ValueError for an unknown task or bad numbers, LengthError (a ValueError) when
    the task's fixed text alone exceeds `length`, and DataUnavailable when qa_1/qa_2 lack
    their files in `data_dir` (or `haystack_path` is given but unreadable), and NoChatTemplate
    (a ValueError) for `chat_template=True` with a tokenizer that has none.
    """
    if task not in rc.TASK_SPECS:
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(RULER_TASKS)}")
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    spec = rc.TASK_SPECS[task]
    tok = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else load_tokenizer(tokenizer)
    if chat_template and not has_chat_template(tok):
        raise NoChatTemplate("chat_template=True, but the tokenizer has no chat template")
    builder = _builder(spec, length, seed, partial(count_tokens, tok), haystack_path, data_dir)
    # The fit counts exactly the ids the model will read (sample_token_ids).
    count = partial(count_tokens, tok, add_special_tokens=not chat_template)

    samples: list[dict[str, Any]] = []
    hint = 256  # a cheap first probe to measure tokens per unit; later samples start from the last fit
    for index in range(n):
        render, max_amount = builder.sample(index)
        if chat_template:
            render = _in_chat(render, tok)
        fit = fit_to_budget(render, count, length, hint=hint, max_amount=max_amount,
                            slack=int(length * SEARCH_SLACK))
        if max_amount is not None and fit.amount == max_amount and fit.tokens < (1 - LENGTH_TOLERANCE) * length:
            raise DataUnavailable(
                f"{task}: the local data runs out at {fit.tokens} tokens, short of the {length}-token target")
        hint = max(1, fit.amount)
        r: Rendered = fit.value  # type: ignore[assignment]
        samples.append({
            "task": task,
            "index": index,
            "input": r.prompt,
            "outputs": r.outputs,
            "length": fit.tokens,
            "length_target": length,
            "answer_prefix": r.answer_prefix,
            "max_new_tokens": spec.max_new_tokens,
            "haystack": builder.haystack,
            "metric": spec.metric,
            "seed": seed,
            "chat_template": chat_template,
        })
    return samples


def _in_chat(render, tok: PreTrainedTokenizerBase):
    """The task (without its answer prefix) as the chat's user turn; the answer prefix, stripped,
    opens the assistant turn, as NeMo-Skills' RULER evaluation prefills it."""

    def wrapped(amount: int) -> tuple[str, Rendered]:
        _, r = render(amount)
        task = r.prompt[: len(r.prompt) - len(r.answer_prefix)]
        prefix = r.answer_prefix.strip()
        prompt = chat_prompt(tok, task) + prefix
        return prompt, Rendered(prompt, prefix, r.outputs)

    return wrapped


def sample_token_ids(tokenizer: PreTrainedTokenizerBase, sample: dict[str, Any]) -> list[int]:
    """The token ids the model reads for a sample of `generate`: `input` with the tokenizer's
    own special tokens (its BOS), or, for a chat-templated sample, as the template wrote it.
    `len(...) == sample["length"]`, the count the length fit used."""
    return encode(tokenizer, sample["input"], add_special_tokens=not sample.get("chat_template", False))
