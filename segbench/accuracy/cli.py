"""`segbench data ruler ...`: write RULER samples to a JSONL file.

    segbench data ruler --task niah_single_2 --length 8192 --n 50 --tokenizer tiny \
        --out niah_single_2-8k.jsonl [--seed 0] [--haystack essays.txt] [--data-dir qa_data/] \
        [--chat-template auto|true|false] [--ids]

Each row's token ids are `segbench.accuracy.ruler.sample_token_ids(tokenizer, row)` (the
tokenizer's BOS included, `length` of them); `--ids` writes them into the row as `input_ids`,
the same ids an accuracy cell feeds the model for that sample.

User errors (bad arguments, missing data, an unusable tokenizer or output path) print one
line to stderr and return 2; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from segbench.accuracy.errors import DataUnavailable
from segbench.accuracy.ruler_config import RULER_TASKS

PROG = "segbench data ruler"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the usage block and exit; we want one line and a return code.
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Generate RULER samples offline, fitted to the tokenizer's length.")
    p.add_argument("--task", required=True, choices=RULER_TASKS, metavar="TASK",
                   help=f"one of: {', '.join(RULER_TASKS)}")
    p.add_argument("--length", required=True, type=_positive_int, help="prompt budget in tokens")
    p.add_argument("--n", required=True, type=_positive_int, help="number of samples")
    p.add_argument("--tokenizer", required=True, help="'tiny' (or any 'tiny-*') for the shipped BPE, or a local path")
    p.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--haystack", type=Path, default=None, help="essay text (.txt, or .json with a 'text' field)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the SQuAD / HotpotQA dev files (qa_1, qa_2)")
    p.add_argument("--chat-template", choices=("auto", "true", "false"), default="auto",
                   help="wrap the task in the tokenizer's chat template; auto: yes for an instruct/chat "
                        "checkpoint folder whose tokenizer has one (RULER's choice per model family)")
    p.add_argument("--ids", action="store_true", help="also write each prompt's token ids (input_ids)")
    return p


def data_ruler_main(argv: list[str]) -> int:
    """Entry point for `segbench data ruler`; returns the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    # Imported here so `--help` and argument errors stay instant (transformers is slow to import).
    from segbench.accuracy.chat import NoChatTemplate, resolve_chat_template
    from segbench.accuracy.fit import LengthError
    from segbench.accuracy.ruler import generate, sample_token_ids
    from segbench.accuracy.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: can't load tokenizer {args.tokenizer!r}: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        asked = {"auto": None, "true": True, "false": False}[args.chat_template]
        chat = resolve_chat_template(asked, args.tokenizer, tokenizer)
    except NoChatTemplate as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        samples = generate(args.task, args.length, args.n, tokenizer, seed=args.seed,
                           haystack_path=args.haystack, data_dir=args.data_dir, chat_template=chat)
    except DataUnavailable as exc:
        print(f"{PROG}: data unavailable: {exc.reason}", file=sys.stderr)
        return 2
    except LengthError as exc:
        print(f"{PROG}: error: {args.task} can't fit {args.length} tokens: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                if args.ids:
                    sample = {**sample, "input_ids": sample_token_ids(tokenizer, sample)}
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        os.replace(tmp, args.out)  # no half-written file if we are interrupted
    except OSError as exc:
        print(f"{PROG}: error: can't write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    lengths = [s["length"] for s in samples]
    print(f"wrote {len(samples)} {args.task} samples to {args.out} "
          f"(prompt tokens {min(lengths)}-{max(lengths)} of {args.length})", file=sys.stderr)
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(data_ruler_main(sys.argv[1:]))
