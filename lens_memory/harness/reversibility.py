"""Whether an artifact leaves the model as it found it.

:func:`reversibility` compares the logits of probe prompts before applying the artifact with those
after leaving its ``with`` block, normally and after an exception raised inside it: the largest
absolute difference (``0.0`` means bit-exact). It also reports how much the artifact changed the
probes' next-token logits while applied (a steering vector at every position leaks into unrelated
prompts; an edit of one fact should not).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["reversibility"]


@torch.no_grad()
def _probe_logits(lm: Any, probes: Sequence[str]) -> list[torch.Tensor]:
    return [lm.hf(lm.encode(p)[None].to(lm.device)).logits[0].float().cpu() for p in probes]


class _Probe(Exception):
    pass


@torch.no_grad()
def reversibility(lm: Any, artifact: Any, probes: Sequence[str]) -> dict[str, Any]:
    """Max |Δlogit| on ``probes`` after apply + exit, and after apply + exception; whether it changed them."""
    before = _probe_logits(lm, probes)
    with artifact.apply(lm):
        during = _probe_logits(lm, probes)
    after = _probe_logits(lm, probes)
    try:
        with artifact.apply(lm):
            raise _Probe
    except _Probe:
        pass
    after_exc = _probe_logits(lm, probes)

    def diff(xs: list[torch.Tensor], last: bool = False) -> float:
        return max(float((a[-1:] - b[-1:] if last else a - b).abs().max()) for a, b in zip(before, xs))

    return {"max_abs_diff_after_exit": diff(after), "max_abs_diff_after_exception": diff(after_exc),
            "bit_exact": all(torch.equal(a, b) for a, b in zip(before + before, after + after_exc)),
            "max_abs_change_while_applied": diff(during, last=True)}  # next-token logits (context may add tokens)
