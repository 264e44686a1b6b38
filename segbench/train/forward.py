"""Training forwards with autograd: full causal attention, or segmented execution.

The segmented forward IS the inference adapter's prefill: the same `segments.LayerKV` windows, the
same block selection (fixed per segment, chosen by the previous segment's last query), the same
registered attention function, one model forward per segment at segment-local positions. The only
difference is that it keeps every position's hidden state (the adapter keeps the last logits).
The gradient rule lives in `segments.LayerKV`, not here, so it cannot drift from inference: the
pool and the retrieved prefix are detached, the tail carried from the immediately preceding
segment keeps autograd, tail tokens of older segments are detached when a segment closes.
"""

from __future__ import annotations

import functools

import torch

from segbench import hf, segments
from segbench.method import make_method
from segbench.methods import segmented as segmented_method

FULL_ATTENTION = "segbench_sdpa"


def segmented_method_for(model: torch.nn.Module, params: dict) -> segmented_method.Segmented:
    """The inference adapter, set up on `model` (registers and selects its attention function)."""
    method = make_method("segmented", params)
    method.setup(model, device=str(next(model.parameters()).device), dtype="float32")
    return method


def segmented_state(method: segmented_method.Segmented, model: torch.nn.Module, length: int, layer_cls=segments.LayerKV):
    """A fresh state as `Segmented.prefill` builds it, with `layer_cls` layers (tests swap in controls)."""
    n_kv = model.config.num_key_value_heads
    layers = [layer_cls(n_kv, method._heads if i in method._layers else [], method._pool_device,
                        method.params.long_range_tail)
              for i in range(model.config.num_hidden_layers)]
    window = functools.partial(segmented_method._window, kernel=method.params.kernel)
    state = segments.SegmentedState(method.params, segments.Rope(model), layers, window)
    state.reserve = (length // method.params.segment) * method.params.segment
    return state


def segmented_hidden(model: torch.nn.Module, method: segmented_method.Segmented, ids: torch.Tensor,
                     inputs_embeds: torch.Tensor | None = None, state: segments.SegmentedState | None = None) -> torch.Tensor:
    """Final hidden states [B, L, H] of segmented execution.

    `inputs_embeds` lets tests take gradients w.r.t. embeddings; `state` lets them inspect the pool
    or run with other layers (a fresh `segmented_state` by default).
    """
    seg = method.params.segment
    embeds = model.get_input_embeddings()(ids) if inputs_embeds is None else inputs_embeds
    state = state or segmented_state(method, model, ids.shape[1])
    outs = []
    for start in range(0, ids.shape[1], seg):
        n = min(seg, ids.shape[1] - start)
        positions = torch.arange(n, device=ids.device)[None]  # RoPE renumbered inside the window
        out = model.model(inputs_embeds=embeds[:, start : start + n], position_ids=positions,
                          use_cache=False, segbench_state=state)
        state.seg_len = n % seg
        outs.append(out.last_hidden_state)
    return torch.cat(outs, dim=1)


def full_hidden(model: torch.nn.Module, ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    hf.set_attention(model, FULL_ATTENTION)
    embeds = model.get_input_embeddings()(ids) if inputs_embeds is None else inputs_embeds
    return model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state


def hidden_states(model: torch.nn.Module, attention: str, ids: torch.Tensor, seg_params: dict,
                  inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    if attention == "segmented":
        return segmented_hidden(model, segmented_method_for(model, seg_params), ids, inputs_embeds)
    return full_hidden(model, ids, inputs_embeds)


def loss(model: torch.nn.Module, attention: str, ids: torch.Tensor, answers: torch.Tensor | None, seg_params: dict,
         all_token_weight: float = 0.0, recall: torch.Tensor | None = None,
         recall_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(total loss, metrics): cross-entropy of the answer after the last prompt token, plus
    `recall_weight` x the loss on the tokens marked in `recall` [B, L] (predicted one position earlier), plus
    `all_token_weight` x the mean next-token loss inside the prompt. The LM head runs only where a
    loss is taken: over 4096 words at every position it would be most of a step's time.
    Metrics (detached floats): answer_loss, answer_acc, and recall_loss / recall_acc when there are targets."""
    h = hidden_states(model, attention, ids, seg_params)
    head = model.get_output_embeddings()
    ce = torch.nn.functional.cross_entropy
    total, metrics = torch.zeros((), device=h.device), {}
    if answers is not None:  # None: the targets are all in `recall` (RULER samples carry their answer tokens)
        answer_logits = head(h[:, -1]).float()
        answer_loss = ce(answer_logits, answers)
        total = answer_loss
        metrics = {"answer_loss": float(answer_loss.detach()), "answer_acc": float((answer_logits.argmax(-1) == answers).float().mean())}
    if recall is not None and recall.any():
        rows, pos = recall.nonzero(as_tuple=True)
        recall_logits = head(h[rows, pos - 1]).float()
        recall_loss = ce(recall_logits, ids[rows, pos])
        metrics.update(recall_loss=float(recall_loss.detach()), recall_acc=float((recall_logits.argmax(-1) == ids[rows, pos]).float().mean()))
        if recall_weight > 0:
            total = total + recall_weight * recall_loss
    if all_token_weight > 0:
        total = total + all_token_weight * ce(head(h[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
    return total, metrics
