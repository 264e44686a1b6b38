"""LongBench and LongBench v2 from local files, prompted and truncated the official way.

Data layout (nothing is downloaded):

    LongBench:     <data_dir>/<dataset>.jsonl    (the HF dataset's data.zip extracts to data/*.jsonl;
                   <data_dir>/data/<dataset>.jsonl is found too; LongBench-E: <dataset>_e.jsonl)
                   or <data_dir>/<dataset>/      a `datasets.save_to_disk` folder (needs `datasets`)
    LongBench v2:  <data_dir>/data.json          (the HF LongBench-v2 file; .jsonl also read)
                   or a `datasets.save_to_disk` folder at <data_dir> or <data_dir>/data

Prompting follows THUDM/LongBench `pred.py`: fill the dataset's prompt, middle-truncate its
tokens to the budget (the instructions sit at both ends), then apply the chat template,
except for the few-shot / code-completion datasets where LongBench deliberately doesn't.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from segbench.accuracy import longbench_config as cfg
from segbench.accuracy.chat import chat_prompt, has_chat_template
from segbench.accuracy.errors import DataUnavailable
from segbench.accuracy.tokenizer import encode

__all__ = [
    "load_longbench", "load_longbench_v2", "truncate_middle", "longbench_prompt", "longbench_v2_prompt",
    "build_longbench_input", "build_longbench_v2_input", "DataUnavailable",
]


def truncate_middle(token_ids: Sequence[int], max_len: int) -> list[int]:
    """Keep the first max_len//2 and the last max_len//2 tokens, cutting the middle.

    LongBench's rule (`half = int(max_length/2)`); for an odd max_len that keeps max_len - 1
    tokens, never more than max_len. Shorter inputs come back unchanged.
    """
    if max_len < 0:
        raise ValueError("max_len must be >= 0")
    ids = list(token_ids)
    if len(ids) <= max_len:
        return ids
    half = max_len // 2
    return ids[:half] + ids[len(ids) - half:] if half else []


# --- loading -------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataUnavailable(f"{path} line {number} is not JSON ({exc.msg})") from None
    return rows


def _load_from_disk(folder: Path, split: str) -> list[dict[str, Any]] | None:
    """Rows of a `datasets.save_to_disk` folder, or None if it isn't one (or `datasets` is
    not installed)."""
    if not (folder / "dataset_info.json").is_file() and not (folder / "dataset_dict.json").is_file():
        return None
    try:
        import datasets
    except ImportError:
        return None
    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataUnavailable(f"{folder} has no {split!r} split (has {', '.join(ds)})")
        ds = ds[split]
    return [dict(row) for row in ds]


def load_longbench(dataset: str, data_dir: str | Path | None, e: bool = False) -> list[dict[str, Any]]:
    """The records of one LongBench subset (fields: input, context, answers, length,
    all_classes, ...). e=True reads the LongBench-E variant."""
    if dataset not in cfg.DATASET2PROMPT:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; known: {', '.join(cfg.LONGBENCH_DATASETS)}")
    if e and dataset not in cfg.LONGBENCH_E_DATASETS:
        raise ValueError(f"{dataset!r} has no LongBench-E subset")
    name = f"{dataset}_e" if e else dataset
    if data_dir is None:
        raise DataUnavailable(f"LongBench {name} needs a local data_dir holding {name}.jsonl")
    root = Path(data_dir)
    for path in (root / f"{name}.jsonl", root / "data" / f"{name}.jsonl"):
        if path.is_file():
            return _read_jsonl(path)
    rows = _load_from_disk(root / name, "test")
    if rows is not None:
        return rows
    raise DataUnavailable(f"LongBench {name} not found: no {name}.jsonl or save_to_disk folder {name}/ in {root}")


def load_longbench_v2(data_dir: str | Path | None) -> list[dict[str, Any]]:
    """LongBench v2 records (fields: _id, domain, difficulty, length, question, choice_A..D,
    answer, context)."""
    if data_dir is None:
        raise DataUnavailable("LongBench v2 needs a local data_dir holding data.json")
    root = Path(data_dir)
    for path in (root / "data.json", root / "longbench_v2.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataUnavailable(f"{path} is not valid JSON ({exc.msg})") from None
            if not isinstance(data, list):
                raise DataUnavailable(f"{path} should hold a JSON list of questions")
            return data
    for path in (root / "data.jsonl", root / "longbench_v2.jsonl"):
        if path.is_file():
            return _read_jsonl(path)
    for folder in (root, root / "data"):
        rows = _load_from_disk(folder, "train")  # the HF dataset's only split
        if rows is not None:
            return rows
    raise DataUnavailable(f"LongBench v2 not found: no data.json(l) or save_to_disk folder in {root}")


# --- prompting -----------------------------------------------------------------------------


def longbench_prompt(dataset: str, record: dict[str, Any]) -> str:
    """The dataset's official prompt filled with the record's `context` and `input`."""
    base = dataset[:-2] if dataset.endswith("_e") else dataset
    return cfg.DATASET2PROMPT[base].format(context=record.get("context", ""), input=record.get("input", ""))


def longbench_v2_prompt(record: dict[str, Any], cot: bool = False) -> str:
    """The official 0-shot (or chain-of-thought) multiple-choice prompt for one question."""
    template = cfg.V2_TEMPLATE_0SHOT_COT if cot else cfg.V2_TEMPLATE_0SHOT
    fields = {"$DOC$": record["context"], "$Q$": record["question"], "$C_A$": record["choice_A"],
              "$C_B$": record["choice_B"], "$C_C$": record["choice_C"], "$C_D$": record["choice_D"]}
    for placeholder, value in fields.items():  # in this order, as the official script does
        template = template.replace(placeholder, str(value).strip())
    return template


def _finish(tokenizer: PreTrainedTokenizerBase, text: str, chat: bool) -> tuple[str, list[int], bool]:
    """Wrap in the chat template when asked and available; return (prompt, ids, applied)."""
    if chat and has_chat_template(tokenizer):
        prompt = chat_prompt(tokenizer, text)
        # The template already wrote its special tokens (BOS etc.) into the text.
        return prompt, encode(tokenizer, prompt, add_special_tokens=False), True
    return text, encode(tokenizer, text), False


def build_longbench_input(dataset: str, record: dict[str, Any], tokenizer: PreTrainedTokenizerBase,
                          max_len: int, use_chat_template: bool = True) -> dict[str, Any]:
    """Model input for one LongBench record, as `pred.py` builds it.

    Returns prompt (text), input_ids, max_new_tokens, truncated, chat_template (applied or
    not), plus the record's answers / all_classes / length for scoring.
    """
    base = dataset[:-2] if dataset.endswith("_e") else dataset
    text = longbench_prompt(base, record)
    ids = tokenizer(text)["input_ids"]
    truncated = len(ids) > max_len
    if truncated:
        kept, half = truncate_middle(ids, max_len), max_len // 2
        # Decoded half by half and joined as text, as pred.py does.
        text = (tokenizer.decode(kept[:half], skip_special_tokens=True)
                + tokenizer.decode(kept[half:], skip_special_tokens=True))
    prompt, input_ids, chat = _finish(tokenizer, text, use_chat_template and base not in cfg.NO_CHAT_TEMPLATE)
    return {"dataset": dataset, "prompt": prompt, "input_ids": input_ids,
            "max_new_tokens": cfg.DATASET2MAXLEN[base], "truncated": truncated, "chat_template": chat,
            "answers": record.get("answers", []), "all_classes": record.get("all_classes") or [],
            "length": record.get("length")}


def build_longbench_v2_input(record: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_len: int,
                             cot: bool = False, use_chat_template: bool = True) -> dict[str, Any]:
    """Model input for one LongBench v2 question (`pred.py`: middle truncation of the
    prompt's tokens, then a single user turn)."""
    text = longbench_v2_prompt(record, cot=cot)
    ids = tokenizer(text)["input_ids"]
    truncated = len(ids) > max_len
    if truncated:
        # v2 keeps max_len//2 from the head and the ceiling half from the tail.
        head = max_len // 2
        text = tokenizer.decode(ids[:head] + ids[len(ids) - (max_len - head):], skip_special_tokens=True)
    prompt, input_ids, chat = _finish(tokenizer, text, use_chat_template)
    return {"prompt": prompt, "input_ids": input_ids,
            "max_new_tokens": cfg.V2_MAX_NEW_TOKENS_COT if cot else cfg.V2_MAX_NEW_TOKENS,
            "truncated": truncated, "chat_template": chat, "answer": record.get("answer"),
            "_id": record.get("_id"), "difficulty": record.get("difficulty"), "length": record.get("length")}
