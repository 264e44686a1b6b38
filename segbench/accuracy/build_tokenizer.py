"""Build the shipped tiny byte-level BPE (`segbench/assets/tiny_bpe.json`) from generated text.

    python -m segbench.accuracy.build_tokenizer [--out PATH]

Deterministic: the corpus comes from fixed seeds and the BPE trainer breaks ties by token id,
so the same code gives the same file byte for byte (the tests check the shipped file still
loads with the expected vocabulary; rebuild and commit it when the word lists change).

The corpus is what the offline benchmarks put in front of a model: essay-like prose, RULER's
templates, needles with numbers / words / UUIDs, variable chains, numbered word lists, coded
words and the English LongBench prompts. Digits are split one per token, so every number a
needle carries is spelled digit by digit, whatever its value.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from segbench.accuracy import longbench_config as lb
from segbench.accuracy import ruler_config as rc
from segbench.accuracy.textgen import NOISE_SENTENCE, essay_sentence, random_number, random_uuid, random_value
from segbench.accuracy.tokenizer import SPECIAL_TOKENS, TINY_TOKENIZER_PATH
from segbench.accuracy.wordlists import ADJECTIVES, FUNCTION_WORDS, NOUNS, VERBS

# The shipped vocabulary was trained on RULER's 2024 VT answer prefix, typo included; the
# corpus keeps it so the file (and the ids the trained tiny presets were trained with) stay put.
_CORPUS_VT_ANSWER_PREFIX = rc.VT_ANSWER_PREFIX.replace("are assigned the value", "are assgined the value")

VOCAB_SIZE = 4096  # specials + 256 byte symbols + merges; a tiny model with vocab 4096 fits it


def _template_lines() -> Iterator[str]:
    rng = random.Random("templates")
    for kind in ("numbers", "words", "uuids"):
        for plural in (True, False):
            noun = kind if plural else kind[:-1]
            query = random_value("words", rng)
            yield (rc.NIAH_TEMPLATE + rc.NIAH_ANSWER_PREFIX).format(
                type_needle_v=noun, context=essay_sentence(rng), query=query)
    yield (rc.VT_TEMPLATE + _CORPUS_VT_ANSWER_PREFIX).format(context=NOISE_SENTENCE, query="12345", num_v=5)
    yield rc.CWE_TEMPLATE.format(context="1. apple 2. pear") + rc.CWE_ANSWER_PREFIX
    yield rc.FWE_TEMPLATE.format(context="... abcdef") + rc.FWE_ANSWER_PREFIX
    yield rc.QA_TEMPLATE.format(context=rc.QA_DOCUMENT.format(i=1, document="Text."), query="Who?") + rc.QA_ANSWER_PREFIX
    for prompt in lb.DATASET2PROMPT.values():
        if prompt.isascii():
            yield prompt
    yield lb.V2_TEMPLATE_0SHOT
    yield lb.V2_TEMPLATE_0SHOT_COT_ANS


def corpus() -> Iterator[str]:
    """The training text, one document per item, in a fixed order."""
    rng = random.Random("tiny-bpe-corpus")
    for _ in range(4):  # templates recur in every prompt, so weight them up
        yield from _template_lines()
    yield " ".join(NOUNS + ADJECTIVES + VERBS + FUNCTION_WORDS)
    for _ in range(6000):  # essay paragraphs
        yield " ".join(essay_sentence(rng) for _ in range(rng.randint(3, 8)))
    for _ in range(1500):  # needles of every key/value type, and noise haystack lines
        kind_k = rng.choice(("words", "uuids", "numbers"))
        kind_v = rng.choice(("numbers", "words", "uuids"))
        yield rc.NIAH_NEEDLE.format(type_needle_v=kind_v, key=random_value(kind_k, rng),
                                    value=random_value(kind_v, rng))
        yield NOISE_SENTENCE
    for _ in range(600):  # variable-tracking chains
        names = ["".join(rng.choices(string.ascii_uppercase, k=rng.choice((3, 5)))) for _ in range(5)]
        chain = [f"VAR {names[0]} = {random_number(rng, 5)}"]
        chain += [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:], strict=False)]
        yield " ".join(chain)
    all_words = NOUNS + ADJECTIVES + VERBS
    for _ in range(400):  # numbered word lists, as in common-words extraction
        start = rng.randint(1, 3000)
        yield " ".join(f"{start + i}. {rng.choice(all_words)}" for i in range(rng.randint(20, 60)))
    for _ in range(300):  # coded words, as in frequent-words extraction
        yield " ".join(rng.choice(("...", "".join(rng.choices(string.ascii_lowercase, k=6))))
                       for _ in range(rng.randint(20, 60)))
    for _ in range(300):  # UUIDs and long numbers on their own
        yield f"{random_uuid(rng)} {random_number(rng, rng.randint(1, 10))}"


def build(out: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=False)
    return tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_PATH)
    args = parser.parse_args(argv)
    tok = build(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, vocab {tok.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
