"""How good is an SAE at a hook: :class:`SAEQuality` and :func:`sae_quality`.

Measured on held-out tokens, position 0 (BOS) excluded:

* ``explained_variance`` ``= 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` (sae-lens's definition);
* ``l0``: mean number of active features per token; ``dead_fraction``: features that never fire
  on the evaluation tokens (an upper bound on truly dead features for few tokens);
* ``loss_recovered`` ``= (ce_zero - ce_spliced) / (ce_zero - ce_clean)``: next-token cross
  entropy with the reconstruction spliced in at the hook (every position but BOS), against the
  clean model and against the activation zero-ablated there. The shared prefix (blocks before
  the hook) runs once; only the later blocks and the 262k-vocabulary unembedding run per
  condition, on a few thousand tokens (``n_ce_tokens``) because the unembedding dominates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from ..corpus import Corpus, resolve_corpus, token_blocks
from ..errors import LensMemoryError
from .config import _hook_layer, resid_post_hook
from .features import _activations, _stack_or_none, check_sae

if TYPE_CHECKING:  # sae_lens is imported when first used (it pulls in wandb and datasets)
    from sae_lens import SAE

__all__ = ["SAEQuality", "sae_quality"]


@dataclass(frozen=True)
class SAEQuality:
    """How well an SAE reconstructs one hook's activations, and what splicing it in costs.

    ``loss_recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean)``: 1 when the model with the
    reconstruction spliced in predicts as well as the clean model, 0 when as badly as with the
    activation zero-ablated. Cross entropies are in nats per token; ``nan`` when ``n_ce_tokens == 0``.
    """

    explained_variance: float
    mse: float  # mean over tokens of ‖x - x̂‖²
    l0: float
    dead_fraction: float
    n_dead: int
    d_sae: int
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    loss_recovered: float
    n_eval_tokens: int  # activations (BOS excluded) behind explained_variance, mse, l0 and dead_fraction
    n_ce_tokens: int  # next-token predictions behind the cross entropies
    hook: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEQuality":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items() if k in names})

    def __str__(self) -> str:
        return (f"EV {self.explained_variance:.3f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, "
                f"loss recovered {self.loss_recovered:.3f} (CE clean {self.ce_clean:.3f} / spliced "
                f"{self.ce_spliced:.3f} / zero {self.ce_zero:.3f}; {self.n_eval_tokens} tokens, "
                f"{self.n_ce_tokens} predictions)")



def _ce_sum(lm: Any, stack: Any, h: torch.Tensor, ids: torch.Tensor, normed: bool, chunk: int = 512) -> float:
    """Summed next-token cross entropy of positions 1..pos-2 (targets 2..pos-1) from final residuals ``h``."""
    x = h[:, 1:-1].reshape(-1, h.shape[-1])
    y = ids[:, 2:].reshape(-1).to(h.device)
    total = 0.0
    for i in range(0, x.shape[0], chunk):
        xi = x[i:i + chunk]
        logits = lm.unembed(xi) if normed else stack.logits(xi)
        total += float(torch.nn.functional.cross_entropy(logits.float(), y[i:i + chunk], reduction="sum"))
    return total


def _sae_apply(sae: Any, x: torch.Tensor) -> torch.Tensor:
    return sae.decode(sae.encode(x.to(sae.device, sae.dtype))).to(x.device, x.dtype)


@torch.no_grad()
def _ce_conditions(lm: Any, hook: str, ids: torch.Tensor,
                   conds: dict[str, Callable[[torch.Tensor], torch.Tensor] | None]) -> tuple[dict[str, float], torch.Tensor]:
    """Summed CE per condition (a map of the activation at ``hook``, positions >= 1; ``None``: clean),
    and the clean activation. The blocks before the hook run once."""
    ids = ids.to(lm.device)
    layer = _hook_layer(hook)
    stack = _stack_or_none(lm)
    out: dict[str, float] = {}
    clean: dict[str, torch.Tensor] = {}

    def replace(fn: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def hook_fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            if fn is None:
                clean.setdefault("act", x.detach().clone())
                return x
            y = x.clone()
            y[:, 1:] = fn(x[:, 1:])
            return y
        return hook_fn

    if stack is not None and hook == resid_post_hook(layer):
        a = stack.run(stack.embed(ids), 0, layer + 1)
        clean["act"] = a
        for name, fn in conds.items():
            h = a
            if fn is not None:
                h = a.clone()
                h[:, 1:] = fn(a[:, 1:])
            out[name] = _ce_sum(lm, stack, stack.run(h, layer + 1), ids, normed=False)
    elif stack is not None:
        pre = stack.run(stack.embed(ids), 0, layer)
        for name, fn in conds.items():
            with lm.bridge.hooks(fwd_hooks=[(hook, replace(fn))]):
                h = stack.run(pre, layer)
            out[name] = _ce_sum(lm, stack, h, ids, normed=False)
    else:  # architectures the partial-forward engine does not drive: full passes with a hook
        for name, fn in conds.items():
            with lm.bridge.hooks(fwd_hooks=[(hook, replace(fn))]):
                h = lm.hf.base_model(input_ids=ids).last_hidden_state
            out[name] = _ce_sum(lm, None, h, ids, normed=True)
    if "act" not in clean:
        clean["act"] = _activations(lm, hook, ids)
    return out, clean["act"]


def _ids_tensor(lm: Any, corpus: Corpus, n_tokens: int, seq_len: int, batch_size: int = 64) -> torch.Tensor:
    rows = [b for b in token_blocks(lm, corpus, n_tokens, seq_len=seq_len, batch_size=batch_size)]
    if not rows:
        raise LensMemoryError(f"corpus {corpus.name!r} yielded no token rows of length {seq_len}")
    return torch.cat(rows)


@dataclass
class _Sums:
    """Running sums behind :class:`SAEQuality`: reconstruction over the tokens (BOS dropped), CE per condition."""

    d_sae: int
    fired: torch.Tensor  # [d_sae] bool: the feature was active on some token
    sse: float = 0.0
    sq: float = 0.0
    s: torch.Tensor | None = None
    n: int = 0
    nnz: int = 0
    ce: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "spliced": 0.0, "zero": 0.0})
    n_ce: int = 0

    def add_reconstruction(self, sae: Any, act: torch.Tensor) -> None:
        x = act[:, 1:].to(sae.device, sae.dtype)
        f = sae.encode(x)
        xh = sae.decode(f)
        x2 = x.reshape(-1, int(sae.cfg.d_in)).double()
        f2 = f.reshape(-1, self.d_sae)
        self.sse += float((xh.reshape(x2.shape).double() - x2).pow(2).sum())
        self.sq += float(x2.pow(2).sum())
        self.s = x2.sum(0) if self.s is None else self.s + x2.sum(0)
        self.n += x2.shape[0]
        active = f2 != 0
        self.nnz += int(active.sum())
        self.fired |= active.any(0)

    def result(self, hook: str) -> SAEQuality:
        sse, n, d_sae, ce, n_ce = self.sse, self.n, self.d_sae, self.ce, self.n_ce
        var = self.sq - float(self.s.pow(2).sum()) / n
        if n_ce:
            c_clean, c_spl, c_zero = (ce[k] / n_ce for k in ("clean", "spliced", "zero"))
            denom = c_zero - c_clean
            recovered = (c_zero - c_spl) / denom if denom != 0 else float("nan")
        else:
            c_clean = c_spl = c_zero = recovered = float("nan")
        n_dead = int((~self.fired).sum())
        return SAEQuality(explained_variance=1.0 - sse / var if var > 0 else float("nan"), mse=sse / n,
                          l0=self.nnz / n, dead_fraction=n_dead / d_sae, n_dead=n_dead, d_sae=d_sae, ce_clean=c_clean,
                          ce_spliced=c_spl, ce_zero=c_zero, loss_recovered=recovered, n_eval_tokens=n,
                          n_ce_tokens=n_ce, hook=hook)


def _eval_ids(lm: Any, ids: torch.Tensor | None, corpus: Corpus | str, n_tokens: int, seq_len: int,
              n_ce_tokens: Any) -> torch.Tensor:
    """The evaluation rows (``ids``, else ``n_tokens`` positions of ``corpus``), arguments checked."""
    if ids is None:
        ids = _ids_tensor(lm, resolve_corpus(lm, corpus), n_tokens, seq_len)
    if ids.ndim != 2 or ids.shape[1] < 3 or ids.dtype != torch.long:
        raise LensMemoryError(f"sae_quality needs token ids [batch pos] (long, pos >= 3), got "
                              f"{tuple(ids.shape)} {ids.dtype}")
    if not isinstance(n_ce_tokens, int) or n_ce_tokens < 0:
        raise LensMemoryError(f"n_ce_tokens must be a non-negative integer, got {n_ce_tokens!r}")
    return ids


@torch.no_grad()
def sae_quality(lm: Any, sae: "SAE", hook: str | None = None, ids: Int[torch.Tensor, "batch pos"] | None = None, *,
                corpus: Corpus | str = "offline", n_tokens: int = 8192, n_ce_tokens: int = 2048,
                seq_len: int = 128, batch_size: int = 16, progress: bool = False) -> SAEQuality:
    """Reconstruction and splicing quality of ``sae`` at ``hook`` (default: the SAE's recorded hook).

    Args:
        ids: token rows ``[batch pos]`` with BOS at position 0 (e.g. held-out rows); default
            ``n_tokens`` positions of ``corpus`` in rows of ``seq_len``.
        n_ce_tokens: next-token predictions (from the first rows) scored for the loss recovered;
            each costs a 262k-vocabulary unembedding per condition on Gemma. 0 skips it (``nan``).
        batch_size: rows per forward pass.
    """
    hook = check_sae(lm, sae, hook)
    ids = _eval_ids(lm, ids, corpus, n_tokens, seq_len, n_ce_tokens)
    per_row = ids.shape[1] - 2
    ce_rows = min(ids.shape[0], -(-n_ce_tokens // per_row)) if n_ce_tokens else 0
    d_sae = int(sae.cfg.d_sae)
    acc = _Sums(d_sae=d_sae, fired=torch.zeros(d_sae, dtype=torch.bool, device=sae.device))
    conds = {"clean": None, "spliced": lambda x: _sae_apply(sae, x), "zero": torch.zeros_like}
    bar = tqdm(total=ids.shape[0], desc=f"SAE quality {hook}", unit="row", leave=False, disable=not progress)
    for i in range(0, ids.shape[0], batch_size):
        rows = ids[i:i + batch_size]
        n_ce_rows = max(0, min(rows.shape[0], ce_rows - i))
        if n_ce_rows:
            sums, act = _ce_conditions(lm, hook, rows[:n_ce_rows], conds)
            for k in acc.ce:
                acc.ce[k] += sums[k]
            acc.n_ce += n_ce_rows * per_row
            if n_ce_rows < rows.shape[0]:
                act = torch.cat([act, _activations(lm, hook, rows[n_ce_rows:])])
        else:
            act = _activations(lm, hook, rows)
        acc.add_reconstruction(sae, act)
        bar.update(rows.shape[0])
    bar.close()
    return acc.result(hook)
