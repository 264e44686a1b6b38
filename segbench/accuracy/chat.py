"""Chat templates for accuracy prompts: whether to use one, and how the prompt is then built.

The official harnesses wrap a task for an instruct model in the tokenizer's own chat template,
one user turn, generation prompt added:

- RULER (NVIDIA/RULER main, run through NeMo-Skills' `ns prepare_data ruler` / `ns eval`, the
  route its README documents since 2025): the samples are generated with the "base" template,
  the answer prefix is split off, and at evaluation the user turn is the task and the answer
  prefix, stripped, starts the assistant's reply (`start_assistant_response_key=generation`).
- LongBench (pred.py) and LongBench v2: the filled prompt is the user turn.

`chat_prompt` renders exactly that text. Its token ids are taken *without* the tokenizer's
special tokens: the template writes its own BOS (Llama-3.1: `<|begin_of_text|>`), as
`apply_chat_template(tokenize=True)` and vLLM's chat route do. (Feeding the rendered text to a
text-completion endpoint that adds special tokens again gives Llama-3 a second BOS; we don't.)

The default is what RULER's own model table (`scripts/config_models.sh`) does: instruct and
chat checkpoints get their chat template, base checkpoints the plain "base" template. RULER's
2024 scripts used hard-coded template strings per family (`meta-llama3` for Llama-3.1-Instruct,
without Llama-3.1's dated system header); the tokenizer's template is what its current route
applies, and what a checkpoint folder brings with it.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import PreTrainedTokenizerBase

# Checkpoint names RULER's model table runs with a chat template ("...-Instruct", "...-chat",
# Gemma's "-it"); anything else is a base model and gets the plain template.
_INSTRUCT_NAME = re.compile(r"(instruct|chat|(^|[-_])it($|[-_]))", re.IGNORECASE)


class NoChatTemplate(ValueError):
    """chat_template: true was asked for, but the tokenizer brings no chat template."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def is_instruct_name(model: str | Path) -> bool:
    """True for an instruct/chat checkpoint name or folder ("Llama-3.1-8B-Instruct", "gemma-2-9b-it")."""
    return bool(_INSTRUCT_NAME.search(Path(str(model)).name))


def default_chat_template(model: str | Path, tokenizer: PreTrainedTokenizerBase) -> bool:
    """RULER's own choice for this model family: a chat template for instruct/chat checkpoints
    whose tokenizer has one, the plain prompt otherwise (base models, the tiny presets)."""
    return is_instruct_name(model) and has_chat_template(tokenizer)


def resolve_chat_template(asked: bool | None, model: str | Path, tokenizer: PreTrainedTokenizerBase) -> bool:
    """The suite's `chat_template` (None: the family default); true without a template is an error."""
    if asked is None:
        return default_chat_template(model, tokenizer)
    if asked and not has_chat_template(tokenizer):
        raise NoChatTemplate(f"chat_template: true, but the tokenizer of {str(model)!r} has no chat template")
    return bool(asked)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_text: str) -> str:
    """`user_text` as the single user turn of the tokenizer's chat template, generation prompt
    added (the assistant header the answer follows)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
