"""Prompt builders for RULER's self-contained tasks: needle in a haystack, variable tracking,
common-words and frequent-words extraction.

Each builder turns a sample index into a `render(amount)` function: the sample's random
choices (keys, values, needle depths, word lists) are drawn once from the sample's own seeded
RNG, and `amount` (haystack characters, list entries, ...) only decides how much filler
surrounds them. That is what lets the length search try many amounts and keep the sample the same.

Task semantics follow NVIDIA/RULER `scripts/data/synthetic/*.py` (templates, needle formats,
answer lists, few-shot examples); the code is ours.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segbench.accuracy import ruler_config as rc
from segbench.accuracy.fit import fit_to_budget
from segbench.accuracy.haystack import EssayText, FileText, UnitStream, read_haystack_text, repeating
from segbench.accuracy.textgen import NOISE_SENTENCE, random_value, split_sentences
from segbench.accuracy.wordlists import word_pool


@dataclass(frozen=True)
class Rendered:
    prompt: str  # everything the model reads, answer prefix included
    answer_prefix: str
    outputs: list[str]


Render = Callable[[int], tuple[str, Rendered]]


def _rendered(body: str, answer_prefix: str, outputs: list[str]) -> tuple[str, Rendered]:
    prompt = body + answer_prefix
    return prompt, Rendered(prompt, answer_prefix, outputs)


class TaskBuilder:
    """One task at one length and seed; `sample(index)` gives that sample's renderer."""

    haystack: str = ""

    def __init__(self, spec: rc.TaskSpec, *, length: int, seed: int) -> None:
        self.spec = spec
        self.length = length
        self.seed = seed

    def sample_seed(self, index: int) -> str:
        # A string seed is hashed with SHA-512 by `random`: stable across runs and platforms.
        return f"ruler:{self.spec.name}:{self.seed}:{index}"

    def sample(self, index: int) -> tuple[Render, int | None]:
        """(render, max_amount); max_amount is None when the haystack never runs out."""
        raise NotImplementedError


# --- needle in a haystack -----------------------------------------------------------------

DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER: 40 evenly spaced depths, in percent


def _singular(text: str) -> str:
    """RULER's rewrite of the NIAH template when exactly one value is asked for."""
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


class NiahBuilder(TaskBuilder):
    def __init__(self, spec: rc.TaskSpec, *, length: int, seed: int, haystack_path: str | Path | None) -> None:
        super().__init__(spec, length=length, seed=seed)
        a = spec.args
        self.kind_haystack: str = a["type_haystack"]
        self.kind_k: str = a["type_needle_k"]
        self.kind_v: str = a["type_needle_v"]
        self.num_q: int = a["num_needle_q"]
        self.num_k: int = max(a["num_needle_k"], self.num_q)
        self.num_v: int = a["num_needle_v"]
        self.essay: EssayText | FileText | None = None
        if self.kind_haystack == "essay":
            if haystack_path is not None:
                self.essay, self.haystack = FileText(read_haystack_text(haystack_path)), "essay"
            else:
                self.essay, self.haystack = EssayText(str(seed)), "generated-essay"
        else:
            self.haystack = self.kind_haystack
        template, prefix = rc.NIAH_TEMPLATE, rc.NIAH_ANSWER_PREFIX
        self.type_v_prompt = self.kind_v
        if self.num_q * self.num_v == 1:
            template, prefix = _singular(template), _singular(prefix)
            self.type_v_prompt = self.kind_v[:-1]  # "numbers" -> "number"
        self.template, self.prefix = template, prefix

    def sample(self, index: int) -> tuple[Render, int | None]:
        rng = random.Random(self.sample_seed(index))
        keys: list[str] = []
        while len(keys) < self.num_k:
            key = random_value(self.kind_k, rng)
            if key not in keys:
                keys.append(key)
        values = [[random_value(self.kind_v, rng) for _ in range(self.num_v)] for _ in keys]
        needles = [rc.NIAH_NEEDLE.format(type_needle_v=self.kind_v, key=k, value=v)
                   for k, vs in zip(keys, values, strict=True) for v in vs]
        rng.shuffle(needles)
        asked = rng.sample(range(self.num_k), self.num_q)
        queries = [keys[i] for i in asked]
        outputs = [v for i in asked for v in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        prefix = self.prefix.format(type_needle_v=self.type_v_prompt, query=query)

        if self.essay is not None:
            essay = self.essay
            depths = rng.sample(DEPTHS, len(needles))

            def context(amount: int) -> str:
                sents = split_sentences(essay.text(amount))
                cuts = sorted(int(len(sents) * d / 100) for d in depths)
                pieces, last = [], 0
                for cut, needle in zip(cuts, needles, strict=True):
                    pieces += [" ".join(sents[last:cut]), needle]
                    last = cut
                pieces.append(" ".join(sents[last:]))
                return " ".join(p for p in pieces if p)
        else:
            stream = repeating(NOISE_SENTENCE) if self.kind_haystack == "noise" else self._distractors(index, keys)
            spots = [rng.random() for _ in needles]

            def context(amount: int) -> str:
                units = stream.take(amount)
                for spot, needle in sorted(zip((int(s * len(units)) for s in spots), needles, strict=True),
                                           reverse=True):
                    units.insert(spot, needle)
                return "\n".join(units)

        def render(amount: int) -> tuple[str, Rendered]:
            body = self.template.format(type_needle_v=self.type_v_prompt, context=context(amount), query=query)
            return _rendered(body, prefix, outputs)

        return render, None

    def _distractors(self, index: int, keys: list[str]) -> UnitStream:
        """The "needle" haystack: more needles of the same form, under keys never asked about."""
        rng = random.Random(self.sample_seed(index) + ":distractors")
        taken = set(keys)

        def next_unit() -> str:
            key = random_value(self.kind_k, rng)
            while key in taken:
                key = random_value(self.kind_k, rng)
            return rc.NIAH_NEEDLE.format(type_needle_v=self.kind_v, key=key, value=random_value(self.kind_v, rng))

        return UnitStream(next_unit)


# --- variable tracking --------------------------------------------------------------------

VT_ICL_BUDGET = 500  # RULER fits its in-context example to 500 tokens (prompt, answer prefix included)
VT_ICL_VALUE = "12345"  # RULER's example chain starts at this value; each sample re-draws it


def _vt_names(rng: random.Random, count: int, name_len: int, avoid: set[str] = frozenset()) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        # "VAR" is the keyword every assignment starts with: a variable of that name would make
        # the chain ambiguous (RULER can draw it; the odds are 1 in 17576 per 3-letter name).
        if name not in names and name not in avoid and name != "VAR":
            names.append(name)
    return names


def _vt_chains(rng: random.Random, num_chains: int, num_hops: int, name_len: int,
               value: str | None = None) -> tuple[list[list[str]], list[list[str]]]:
    names = _vt_names(rng, num_chains * (num_hops + 1), name_len)
    groups = [names[i: i + num_hops + 1] for i in range(0, len(names), num_hops + 1)]
    chains = []
    for group in groups:
        root = value if value is not None else str(rng.randint(10000, 99998))  # numpy's [10000, 99999)
        chain = [f"VAR {group[0]} = {root}"]
        chain += [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(num_hops)]
        chains.append(chain)
    return groups, chains


class VariableTrackingBuilder(TaskBuilder):
    """RULER's current VT: noise sentences one per line with the chain statements among them,
    after one in-context example.

    The example is RULER's: the base template with its answer prefix and answer, unchanged
    (newlines kept; RULER's 2024 scripts instead dropped the template's last word and collapsed
    its whitespace whenever a model template wrapped the task), 3-letter names, at most 10 hops,
    root value 12345, fitted once to 500 tokens; each sample re-draws its names and value
    (RULER's `randomize_icl`). It is followed by one blank line and the task.
    """

    haystack = "noise"

    def __init__(self, spec: rc.TaskSpec, *, length: int, seed: int, count: Callable[[str], int]) -> None:
        super().__init__(spec, length=length, seed=seed)
        self.num_chains: int = spec.args["num_chains"]
        self.num_hops: int = spec.args["num_hops"]
        self.count = count  # tokens without special tokens, as RULER's `text_to_tokens` counts
        self._icl: tuple[str, list[str]] | None = None

    def _renderer(self, rng: random.Random, *, icl: bool) -> Render:
        hops = min(10, self.num_hops) if icl else self.num_hops
        groups, chains = _vt_chains(rng, self.num_chains, hops, 3 if icl else 5,
                                    value=VT_ICL_VALUE if icl else None)
        spots = [sorted(rng.random() for _ in chain) for chain in chains]
        stream = repeating(NOISE_SENTENCE)
        value = chains[0][0].split("=")[-1].strip()
        prefix = rc.VT_ANSWER_PREFIX.format(num_v=hops + 1, query=value)

        def render(amount: int) -> tuple[str, Rendered]:
            # The example is RULER's whole noise lines; the task's noise is sized to the character.
            sentences = [NOISE_SENTENCE] * amount if icl else stream.take(amount)
            for chain, chain_spots in zip(chains, spots, strict=True):
                slots = [int(s * len(sentences)) for s in chain_spots]
                for j, (slot, statement) in enumerate(zip(slots, chain, strict=True)):
                    sentences.insert(slot + j, statement)
            context = "\n".join(sentences).replace(". \n", ".\n")
            return _rendered(rc.VT_TEMPLATE.format(context=context, query=value), prefix, list(groups[0]))

        return render

    def _icl_example(self) -> tuple[str, list[str]]:
        """(example text, its names): prompt, a space, the names, a newline, as RULER writes it."""
        if self._icl is None:
            render = self._renderer(random.Random(f"ruler:vt-icl:{self.seed}"), icl=True)
            fit = fit_to_budget(render, self.count, VT_ICL_BUDGET, hint=8)  # amount: noise lines
            example: Rendered = fit.value  # type: ignore[assignment]
            self._icl = (example.prompt + " " + " ".join(example.outputs) + "\n", list(example.outputs))
        return self._icl

    def _randomized_icl(self, rng: random.Random) -> str:
        """The example with fresh names (same lengths) and a fresh root value, replaced everywhere
        at once (RULER replaces one name at a time, which can rename a name twice in a collision)."""
        text, names = self._icl_example()
        fresh = _vt_names(rng, len(names), len(names[0]), avoid=set(names))
        mapping = dict(zip(names, fresh, strict=True))
        mapping[VT_ICL_VALUE] = str(rng.randint(10000, 99998))
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
        return pattern.sub(lambda m: mapping[m.group(0)], text)

    def sample(self, index: int) -> tuple[Render, int | None]:
        rng = random.Random(self.sample_seed(index))
        icl = self._randomized_icl(random.Random(self.sample_seed(index) + ":icl"))
        inner = self._renderer(rng, icl=False)

        def render(amount: int) -> tuple[str, Rendered]:
            _, r = inner(amount)
            prompt = icl + "\n" + r.prompt  # RULER: the example, then the task
            return prompt, Rendered(prompt, r.answer_prefix, r.outputs)

        return render, None


# --- common words extraction --------------------------------------------------------------

def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


# RULER picks its short-context repeat counts when `max_seq_length` (prompt + tokens to
# generate) is below this; the 4K cell is not short.
CWE_SHORT_BELOW = 4096


class CommonWordsBuilder(TaskBuilder):
    """`amount` is the number of list entries of uncommon words (each uncommon word is listed
    `freq_ucw` times, each common word `freq_cw` times)."""

    haystack = "words"

    def __init__(self, spec: rc.TaskSpec, *, length: int, seed: int) -> None:
        super().__init__(spec, length=length, seed=seed)
        a = spec.args
        self.num_cw: int = a["num_cw"]
        # RULER's repeat counts, for the example and for the task, chosen by max_seq_length.
        if length + spec.max_new_tokens < CWE_SHORT_BELOW:
            self.example_shape, self.cw, self.ucw = (20, 3, 1), 6, 1
        else:
            self.example_shape, self.cw, self.ucw = (40, 10, 3), a["freq_cw"], a["freq_ucw"]

    def _list(self, pool_seed: str, shuffle_seed: str, num_words: int, cw: int, ucw: int) -> tuple[list[str], list[str]]:
        pool = word_pool(num_words, pool_seed)
        common, uncommon = pool[: self.num_cw], pool[self.num_cw:]
        entries = common * cw + uncommon * ucw
        random.Random(shuffle_seed).shuffle(entries)
        return entries, common

    def sample(self, index: int) -> tuple[Render, int | None]:
        sseed = self.sample_seed(index)
        n_ex, ex_cw, ex_ucw = self.example_shape
        ex_entries, ex_common = self._list(sseed + ":example", sseed + ":example-order", n_ex, ex_cw, ex_ucw)
        # RULER's one-shot example: the filled template, its answer prefix, a space, the answer.
        example = (rc.CWE_TEMPLATE.format(context=_numbered(ex_entries)) + rc.CWE_ANSWER_PREFIX + " "
                   + _numbered(ex_common))

        def render(amount: int) -> tuple[str, Rendered]:
            n_uncommon = -(-amount // self.ucw)
            entries, common = self._list(sseed + ":words", f"{sseed}:order:{n_uncommon}",
                                         self.num_cw + n_uncommon, self.cw, self.ucw)
            # Trim to exactly `amount` uncommon entries, taking them off the end; the common
            # words keep all their repeats, so the answer can't change.
            excess = len(entries) - (self.num_cw * self.cw + amount)
            common_set = set(common)
            i = len(entries) - 1
            while excess > 0:
                if entries[i] not in common_set:
                    del entries[i]
                    excess -= 1
                i -= 1
            body = example + "\n" + rc.CWE_TEMPLATE.format(context=_numbered(entries))
            return _rendered(body, rc.CWE_ANSWER_PREFIX, list(common))

        return render, None


# --- frequent words extraction ------------------------------------------------------------

def riemann_zeta(alpha: float) -> float:
    """zeta(alpha) for alpha > 1 (Euler-Maclaurin tail; exact to ~1e-12). RULER uses scipy's."""
    if alpha <= 1:
        raise ValueError("alpha must be > 1")
    n = 1000
    head = math.fsum(k ** -alpha for k in range(1, n))
    return head + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha + alpha / 12 * n ** (-alpha - 1)


class FreqWordsBuilder(TaskBuilder):
    """`amount` scales the Zipf-distributed word counts (RULER's `num_words`)."""

    haystack = "coded-words"
    CODED_WORD_LEN = 6

    def __init__(self, spec: rc.TaskSpec, *, length: int, seed: int) -> None:
        super().__init__(spec, length=length, seed=seed)
        self.alpha: float = spec.args["alpha"]
        # RULER: max_seq_length // 50, and max_seq_length counts the tokens to generate too.
        self.vocab_size = max((length + spec.max_new_tokens) // 50, 10)
        self.zeta = riemann_zeta(self.alpha)

    def sample(self, index: int) -> tuple[Render, int | None]:
        sseed = self.sample_seed(index)
        rng = random.Random(sseed)
        vocab: set[str] = set()
        while len(vocab) < self.vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.CODED_WORD_LEN)))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = "..."  # the most frequent "word" is noise, as in RULER
        weights = [k ** -self.alpha / self.zeta for k in range(1, len(ranked) + 1)]

        def render(amount: int) -> tuple[str, Rendered]:
            words = [w for w, p in zip(ranked, weights, strict=True) for _ in range(int(amount * p))]
            random.Random(f"{sseed}:order:{amount}").shuffle(words)
            body = rc.FWE_TEMPLATE.format(context=" ".join(words))
            return _rendered(body, rc.FWE_ANSWER_PREFIX, ranked[1:4])

        return render, None
