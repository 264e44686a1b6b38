"""The analytic memory estimate of a cell as row columns, for every row the runner builds.

A cell that ran out of memory, timed out, was skipped after an OOM or killed still has an
estimate, and that is where it matters most (a dashed line that stops where the method failed
hides the reason). The runner puts these columns into every row it builds; a worker's row carries
the same values, from the same function.
"""

from __future__ import annotations


def estimate_columns(cell) -> dict:
    """`est_kv_cache_bytes` and `est_peak_prefill_bytes` of `cell`, or {} where none can be had.

    The method's `check` is deliberately not called: an `unsupported` cell still gets an estimate
    where the arithmetic can be done. Anything the estimate raises (no analytic model, a plugin
    method this process does not know, a shape it cannot size) means no estimate, never a lost row.
    """
    from segbench.method import make_method  # imports torch: only once a row is built
    from segbench.models import DTYPE_BYTES, shape_of

    try:
        method = make_method(cell.method, cell.params)
        est = method.estimate(shape_of(cell.model, cell.model_overrides), cell.context_len,
                              DTYPE_BYTES[cell.dtype], cell.device)
    except Exception:  # noqa: BLE001 - see the docstring
        return {}
    return {"est_kv_cache_bytes": int(est.stored_kv_bytes), "est_peak_prefill_bytes": int(est.peak_prefill_bytes)}
