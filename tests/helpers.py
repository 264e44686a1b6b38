from __future__ import annotations

from pathlib import Path

import torch
import yaml

HERE = Path(__file__).parent


def write_suite(tmp_path: Path, name: str = "t", **overrides) -> Path:
    """A small CPU suite file (tiny Llama, short contexts) with the fault plugin available."""
    suite = {
        "name": name,
        "model": "tiny-llama",
        "dtype": "float32",
        "device": "cpu",
        "contexts": [64],
        "workload": {"decode_tokens": 2, "warmup": 0, "repeats": 1},
        "limits": {"timeout_s": 60, "host_mem_cap_gb": 4},
        "plugins": [str(HERE / "fault_methods.py")],
        "methods": [{"method": "full"}],
    }
    suite.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# Tolerances (the developers' guide): a result may be off its float64 truth by at most 2x the error
# that the same computation in plain PyTorch at float32 makes against that truth, plus a floor of
# a millionth of the truth's magnitude (so an exact match of tiny values cannot fail on rounding).
# Never an absolute 1e-7: float32 rounding differs between x86 CPUs and thread counts.


def max_error(got: torch.Tensor, truth: torch.Tensor) -> float:
    return (got.double() - truth.double()).abs().max().item()


def tolerance(truth: torch.Tensor, base: torch.Tensor, factor: float = 2.0) -> float:
    """factor x (plain float32 `base` vs float64 `truth`) + 1e-6 x max |truth|."""
    return factor * max_error(base, truth) + 1e-6 * truth.double().abs().max().item()


def assert_within(got: torch.Tensor, truth: torch.Tensor, base: torch.Tensor, what: str, factor: float = 2.0) -> None:
    err, tol = max_error(got, truth), tolerance(truth, base, factor)
    assert err <= tol, f"{what}: max error {err:.3e} > {tol:.3e} ({factor}x plain float32's {max_error(base, truth):.3e})"


def rope_truth(model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [..., L, D] rotated at `positions` [L] in float64, tables included: the truth a float32
    rotation (transformers' or ours) is measured against. Reads the model's inverse frequencies and
    attention factor, so rope scalings that only rescale those (default, llama3, YaRN) are covered."""
    rotary = model.model.rotary_emb
    angles = positions.double()[:, None] * rotary.inv_freq.double()[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos() * rotary.attention_scaling, emb.sin() * rotary.attention_scaling
    x = x.double()
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin
