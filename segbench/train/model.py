"""The tiny Llama trained here, and its checkpoint folder (safetensors + config + tokenizer + our record)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from segbench import hf
from segbench.accuracy.tokenizer import load_tokenizer
from segbench.train.config import ModelConfig

RECORD = "segbench_train.json"


def new_model(cfg: ModelConfig, seed: int) -> torch.nn.Module:
    """A randomly initialised Llama with the shipped tokenizer's vocabulary and special ids, trainable."""
    hf.register_default_attention()
    tok = load_tokenizer("tiny")
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta, initializer_range=cfg.initializer_range, attention_bias=cfg.attention_bias,
        rms_norm_eps=1e-5, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="segbench_sdpa")
    model.train()
    return model


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> dict:
    """Copy every tensor of `path`/model.safetensors whose name and shape match into `model`.
    Returns {"from": path, "copied": [...], "fresh": [...]} (parameter names) for the record."""
    from safetensors.torch import load_file

    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"init_from: no model.safetensors in {path}")
    saved = load_file(str(file))
    copied, fresh = [], []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in saved and saved[name].shape == param.shape:
                param.copy_(saved[name].to(param.dtype))
                copied.append(name)
            else:
                fresh.append(name)
    return {"from": str(path), "copied": copied, "fresh": fresh}


def save_checkpoint(model: torch.nn.Module, out: Path, record: dict) -> None:
    """model.safetensors + config.json (AutoModelForCausalLM loads it), tokenizer files, and `RECORD`."""
    out.mkdir(parents=True, exist_ok=True)
    attn = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"  # a name every transformers knows, not our registered one
    try:
        model.save_pretrained(out, safe_serialization=True)
    finally:
        model.config._attn_implementation = attn
    load_tokenizer("tiny").save_pretrained(out)
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_record(path: str | Path) -> dict:
    return json.loads((Path(path) / RECORD).read_text())
