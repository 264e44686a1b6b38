"""The evaluating tokenizer: the shipped tiny BPE, or a model's own from a local path.

Prompt lengths are measured in the tokenizer of the model being evaluated, so every length
check goes through `count_tokens` with that tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

TINY_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "assets" / "tiny_bpe.json"
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2 in the shipped vocabulary


def is_tiny_name(name: str) -> bool:
    """"tiny" and any "tiny-*" preset name mean the shipped tokenizer."""
    return name == "tiny" or name.startswith("tiny-")


@lru_cache(maxsize=4)
def _load_tiny() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TINY_TOKENIZER_PATH),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Long-context prompts are the point; don't warn about "sequences longer than 1024".
        model_max_length=1 << 30,
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The shipped tiny BPE for "tiny"/"tiny-*", otherwise the tokenizer saved at a local path.

    Never downloads: a path that is not a local tokenizer raises OSError.
    """
    name = str(name_or_path)
    if is_tiny_name(name):
        return _load_tiny()
    if not Path(name).exists():
        raise OSError(f"no local tokenizer at {name!r} (only 'tiny' presets or local paths are accepted)")
    from transformers import AutoTokenizer  # slow to import; only when a path is really given

    return AutoTokenizer.from_pretrained(name, local_files_only=True)


def encode(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """The token ids the model receives for `text`: with the special tokens the tokenizer adds
    itself (a Llama tokenizer's BOS; the tiny BPE adds none) unless `add_special_tokens` is
    false (a chat-templated prompt already holds its own)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Straight to the Rust tokenizer: same ids as tokenizer(text), without the Python
        # overhead or the over-length warning, and (encode_batch_fast) without computing
        # offsets; the length search tokenizes whole prompts several times per sample.
        fast = getattr(backend, "encode_batch_fast", None)
        if fast is not None:
            return list(fast([text], add_special_tokens=add_special_tokens)[0].ids)
        return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool = True) -> int:
    """len(encode(...)): the length fit and the model input count the same tokens."""
    return len(encode(tokenizer, text, add_special_tokens=add_special_tokens))
