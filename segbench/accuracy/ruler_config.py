"""RULER's task definitions, as data (NVIDIA/RULER `scripts/data/synthetic/constants.py` and
`scripts/synthetic.yaml`).

Version followed: RULER's current main (`RULER_VERSION`), the scripts NeMo-Skills'
`ns prepare_data ruler` clones, i.e. after the 2025-05-13 fix of the VT answer prefix's
"assgined" typo. Published numbers from before that date were measured with the typo; the
one-word difference sits in the answer prefix of one task.

The prompt templates, answer prefixes and generation lengths are RULER's, character for
character, because published RULER numbers were measured with exactly these prompts. RULER
appends the answer prefix to the task template before filling it; so do we.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RULER_VERSION = "NVIDIA/RULER main, after the 2025-05-13 VT answer-prefix typo fix"

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are: "
)

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words. {context}\n"
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
    "The following are given documents.\n\n{context}\n\n"
    "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
    "Question: {query}"
)
QA_ANSWER_PREFIX = " Answer:"
QA_DOCUMENT = "Document {i}:\n{document}"

# Generation budget per task family (`tokens_to_generate`).
TOKENS_TO_GENERATE = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                      "freq_words_extraction": 50, "qa": 32}

# Scorer per task family (RULER `scripts/eval/synthetic/constants.py`).
METRIC = {"niah": "string_match_all", "variable_tracking": "string_match_all",
          "common_words_extraction": "string_match_all", "freq_words_extraction": "string_match_all",
          "qa": "string_match_part"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def max_new_tokens(self) -> int:
        return TOKENS_TO_GENERATE[self.family]

    @property
    def metric(self) -> str:
        return METRIC[self.family]


def _niah(name: str, haystack: str, key: str, value: str, k: int = 1, v: int = 1, q: int = 1) -> TaskSpec:
    return TaskSpec(name, "niah", {"type_haystack": haystack, "type_needle_k": key, "type_needle_v": value,
                                   "num_needle_k": k, "num_needle_v": v, "num_needle_q": q})


# RULER's 13 tasks as synthetic.yaml configures them ("noise" is the repeated sentence haystack,
# called "repeat" in older RULER versions).
TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    _niah("niah_single_1", "noise", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", k=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", v=4),
    _niah("niah_multiquery", "essay", "words", "numbers", q=4),
    TaskSpec("vt", "variable_tracking", {"num_chains": 1, "num_hops": 4}),
    TaskSpec("cwe", "common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    TaskSpec("fwe", "freq_words_extraction", {"alpha": 2.0}),
    TaskSpec("qa_1", "qa", {"dataset": "squad"}),
    TaskSpec("qa_2", "qa", {"dataset": "hotpotqa"}),
)}

RULER_TASKS: tuple[str, ...] = tuple(TASK_SPECS)
