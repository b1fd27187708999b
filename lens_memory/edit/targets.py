"""Shared machinery of ROME and MEMIT: edit prompts, keys, and the optimised target vectors.

For each requested fact ``(s, r, o -> o*)`` the *rewriting prompts* are the edit prompt
preceded by short generated contexts ("{ctx}. {prompt}"), followed by the new target's tokens
(but the last); the *KL prompts* are ``"{subject} is a"``. ``lookup`` is the subject's last token.

:func:`optimise_targets` finds, for every fact at once, the vector ``delta`` that -- added at a
hook point at the subject's last token in all of that fact's prompts -- makes the model
predict ``o*`` (Meng et al. 2022, eq. 4): mean negative log-likelihood of the target tokens,
plus ``kl_factor`` times ``KL(p_new || p_orig)`` of the next-token distribution in ``"{subject} is a"``
at the subject's last token, where the reference code reads it (keeps the subject's "essence"), plus ``weight_decay * |delta| / |init|²``; after each Adam step
``delta`` is clamped to ``clamp_norm_factor * |init|``; a fact stops early once its loss is
below ``early_stop_loss``. Each fact's ``delta`` only touches its own prompts and Adam acts
element-wise, so optimising a batch of facts gives the same ``delta`` as one at a time
(tested), while the forward passes are shared.

Only what is needed is computed: with a supported decoder the layers below the hook are run
once (their output cannot depend on ``delta``), and logits are computed only at the target
and KL positions.
"""

from __future__ import annotations

import dataclasses

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int

from ..errors import LensMemoryError
from ..facts import Fact
from ..generation import generate
from ..hooks import capture

__all__ = ["EditOptimisationError", "context_templates", "context_groups", "per_fact_mean", "KL_POSITIONS",
           "EditRows", "build_rows", "optimise_targets", "TargetResult", "check_requests"]

log = logging.getLogger(__name__)

_SEEDS = ("The", "Therefore", "Because", "I", "You")
KL_POSITIONS = ("subject_last", "prompt_last")
_CONTEXT_CACHE: dict[tuple, list[str]] = {}


class EditOptimisationError(LensMemoryError):
    """Target optimisation produced NaN or inf; no weight was changed."""


def context_templates(lm: Any, lengths: Sequence[Sequence[int]], seed: int = 0) -> list[str]:
    """``["{}"]`` plus generated prefixes ``"<text>. {}"`` (ROME's context templates).

    ``lengths`` is a list of ``(n_tokens, count)``: ``count`` texts of ``n_tokens`` generated
    tokens, spread over the seed words "The", "Therefore", "Because", "I", "You", sampled top-5.
    """
    key = (lm.name, lm.state_key(), tuple(map(tuple, lengths)), seed)
    if key not in _CONTEXT_CACHE:
        out = ["{}"]
        for n_tok, count in lengths:
            seeds = [_SEEDS[i % len(_SEEDS)] for i in range(count)]
            texts = generate(lm, seeds, max_new_tokens=n_tok, top_k=5, seed=seed + n_tok)
            for s, t in zip(seeds, texts):
                ctx = (s + t).replace("{", " ").replace("}", " ").replace("\n", " ").strip()
                out.append(ctx + ". {}")
        _CONTEXT_CACHE[key] = out
    return list(_CONTEXT_CACHE[key])


def check_requests(lm: Any, facts: Sequence[Fact]) -> None:
    """Reject edit requests that cannot be edited, naming the fact and the problem."""
    if not facts:
        raise LensMemoryError("no facts to edit (empty request list)")
    for f in facts:
        if not f.target_new or not str(f.target_new).strip():
            raise LensMemoryError(f"fact {f.subject!r} ({f.prompt!r}) has no new target (target_new={f.target_new!r})")
        if f.target_new.strip() == f.target_true.strip():
            raise LensMemoryError(
                f"fact {f.subject!r}: new target {f.target_new!r} equals the current answer {f.target_true!r}")
        lm.fact_subject_range(f)  # raises SubjectNotFoundError naming both
        new_first = lm.continuation_ids(f.target_new)[0]
        top = int(lm.next_token_probs(f.prompt).argmax())
        if top == new_first:
            raise LensMemoryError(f"fact {f.subject!r}: the model already answers {f.prompt!r} with "
                                  f"{lm.decode(top)!r}, the start of the new target {f.target_new!r}")


@dataclass
class EditRows:
    """Token rows of all facts' rewriting and KL prompts, right-padded (exact under a causal mask)."""

    ids: Int[torch.Tensor, "row pos"]
    lookup: Int[torch.Tensor, "row"]  # subject's last token
    owner: Int[torch.Tensor, "row"]  # fact index of each row
    is_kl: torch.Tensor  # bool [row]
    last: Int[torch.Tensor, "row"]  # last real position
    tgt_row: Int[torch.Tensor, "m"]
    tgt_pos: Int[torch.Tensor, "m"]
    tgt_tok: Int[torch.Tensor, "m"]
    first_row: Int[torch.Tensor, "fact"]  # the unprefixed rewriting prompt of each fact
    n_facts: int
    context: Int[torch.Tensor, "row"]  # index of each row's context template (-1 for KL rows)

    def rewrite_rows(self) -> torch.Tensor:
        return (~self.is_kl).nonzero().squeeze(1)

    def to(self, device: Any) -> "EditRows":
        """The same rows with every index tensor on ``device``."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if torch.is_tensor(getattr(self, f.name))})


def build_rows(lm: Any, facts: Sequence[Fact], contexts: Sequence[str],
               kl_prompts: Sequence[str] = ("{} is a",)) -> EditRows:
    seqs, lookup, owner, is_kl, tgt, ctx = [], [], [], [], [], []
    first_row = []
    for i, f in enumerate(facts):
        new_ids = torch.tensor(lm.continuation_ids(f.target_new), dtype=torch.long)
        for c_idx, c in enumerate(contexts):
            base = lm.encode(c.format(f.prompt))
            s1 = lm.fact_subject_range(f, c)[1]
            ctx.append(c_idx)
            if c_idx == 0:
                first_row.append(len(seqs))
            for j, t in enumerate(new_ids.tolist()):
                tgt.append((len(seqs), len(base) - 1 + j, t))
            seqs.append(torch.cat([base, new_ids[:-1]]))
            lookup.append(s1 - 1)
            owner.append(i)
            is_kl.append(False)
        for k in kl_prompts:
            text = k.format(f.subject)
            seqs.append(lm.encode(text))
            lookup.append(lm.subject_range(text, f.subject, k.index("{}"))[1] - 1)
            ctx.append(-1)
            owner.append(i)
            is_kl.append(True)
    width = max(len(s) for s in seqs)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
    t = torch.tensor(tgt, dtype=torch.long)
    return EditRows(ids=ids, lookup=torch.tensor(lookup), owner=torch.tensor(owner), is_kl=torch.tensor(is_kl),
                    last=torch.tensor([len(s) - 1 for s in seqs]), tgt_row=t[:, 0], tgt_pos=t[:, 1], tgt_tok=t[:, 2],
                    first_row=torch.tensor(first_row), n_facts=len(facts), context=torch.tensor(ctx))


def lookup_activations(lm: Any, rows: EditRows, names: Sequence[str]) -> dict[str, Float[torch.Tensor, "row d"]]:
    """Activations at each row's subject-last token (forward stops at the last hook)."""
    idx = (torch.arange(rows.ids.shape[0]), rows.lookup)
    return capture(lm, rows.ids, names, index=idx)


def per_fact_mean(x: Float[torch.Tensor, "row d"], rows: EditRows,
                  groups: Sequence[int] | None = None) -> Float[torch.Tensor, "fact d"]:
    """Each fact's key averaged over its rewriting rows.

    ``groups=None`` averages all rows uniformly (ROME's ``compute_u``: the plain prompt weighs
    1/n_contexts). With ``groups`` (the group of each context template, see
    :func:`context_groups`), rows are averaged within each group and the group means averaged
    (MEMIT's ``compute_ks``: the plain prompt is its own group and weighs 1/n_groups).
    """
    sel = rows.rewrite_rows()
    g = torch.zeros(len(sel), dtype=torch.long) if groups is None else torch.tensor(groups)[rows.context[sel]]
    n_groups = int(g.max()) + 1
    slot = rows.owner[sel] * n_groups + g
    sums = torch.zeros(rows.n_facts * n_groups, x.shape[-1], dtype=torch.float64).index_add_(0, slot, x[sel].double())
    cnt = torch.bincount(slot, minlength=rows.n_facts * n_groups).double()
    means = (sums / cnt.clamp_min(1)[:, None]).view(rows.n_facts, n_groups, -1)
    present = (cnt > 0).view(rows.n_facts, n_groups).double()
    return (means * present[..., None]).sum(1) / present.sum(1, keepdim=True)


def context_groups(lengths: Sequence[Sequence[int]]) -> list[int]:
    """Group index of each template of :func:`context_templates` (0: the plain ``"{}"``; then one per length)."""
    out = [0]
    for g, (_, count) in enumerate(lengths):
        out += [g + 1] * int(count)
    return out


class _Runner:
    """Final (normalised) hidden states of ``rows`` with only the layers from ``start`` on recomputed."""

    def __init__(self, lm: Any, ids: torch.Tensor, start: int):
        from ..stack import UnsupportedArchitectureError

        self.lm, self.ids, self.start = lm, ids.to(lm.device), start
        try:
            st = lm.stack
            with torch.no_grad():
                self.h0 = st.run(st.embed(self.ids), 0, start)
            self.mode = "stack"
        except UnsupportedArchitectureError:
            self.mode = "full"

    def normed(self, sel: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states of the rows ``sel``."""
        if self.mode == "stack":
            st = self.lm.stack
            return st.norm(st.run(self.h0[sel], self.start))
        return self.lm.hf.base_model(input_ids=self.ids[sel]).last_hidden_state



@dataclass
class TargetResult:
    delta: Float[torch.Tensor, "fact d_model"]
    init: Float[torch.Tensor, "fact d_model"]
    loss: list[float]
    nll: list[float]
    target_prob: list[float]  # exp(-nll): geometric-mean probability of the target tokens
    steps: list[int]


def _forward_losses(lm: Any, rows: EditRows, runner: Any, hook: str, delta: torch.Tensor, active: torch.Tensor,
                    kl_init: dict[int, torch.Tensor], kl_position: str, counts: tuple[torch.Tensor, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of the active facts' rows with ``delta`` added: per-fact NLL of the target and KL."""
    n_tgt, rows_per_fact, kl_per_fact = counts
    n, R, dev = delta.shape[0], rows.ids.shape[0], delta.device
    sel = active[rows.owner].nonzero().squeeze(1)  # rows of facts still optimising
    local = torch.full((R,), -1, dtype=torch.long, device=dev)
    local[sel] = torch.arange(len(sel), device=dev)
    owner, lookup = rows.owner[sel], rows.lookup[sel]
    ar = torch.arange(len(sel), device=dev)

    def add_delta(x: torch.Tensor, hook: Any) -> torch.Tensor:
        add = torch.zeros_like(x)
        add[ar, lookup] = delta[owner].to(x.dtype)
        return x + add

    with lm.bridge.hooks(fwd_hooks=[(hook, add_delta)]):
        h = runner.normed(sel)
    tk = active[rows.owner[rows.tgt_row]]
    t_row = rows.tgt_row[tk]
    logp_t = torch.log_softmax(lm.unembed(h[local[t_row], rows.tgt_pos[tk]]).double(), -1)
    tok_lp = logp_t.gather(1, rows.tgt_tok[tk][:, None]).squeeze(1)
    row_lp = torch.zeros(R, dtype=torch.float64, device=dev).index_add(0, t_row, tok_lp) / n_tgt
    rw = sel[~rows.is_kl[sel]]
    nll = -torch.zeros(n, dtype=torch.float64, device=dev).index_add(0, rows.owner[rw], row_lp[rw]) / rows_per_fact
    kl = torch.zeros(n, dtype=torch.float64, device=dev)
    kr = sel[rows.is_kl[sel]]
    if len(kr):
        kl_pos = rows.lookup[kr] if kl_position == "subject_last" else rows.last[kr]
        kl_lp = torch.log_softmax(lm.unembed(h[local[kr], kl_pos]).double(), -1)
        for j, r in enumerate(kr.tolist()):
            kl_init.setdefault(r, kl_lp[j].detach())
        ref = torch.stack([kl_init[r] for r in kr.tolist()])
        kl_row = (kl_lp.exp() * (kl_lp - ref)).sum(-1)
        kl = kl.index_add(0, rows.owner[kr], kl_row) / kl_per_fact
    return nll, kl


@torch.no_grad()
def _adam_step(delta: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, t: int, active: torch.Tensor, lr: float,
               max_norm: torch.Tensor) -> None:
    """Adam (β = 0.9, 0.999; ε = 1e-8) on the active rows, then each delta clamped to ``max_norm``."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    g = delta.grad
    m1[active] = b1 * m1[active] + (1 - b1) * g[active]
    m2[active] = b2 * m2[active] + (1 - b2) * g[active] ** 2
    step = lr * (m1 / (1 - b1 ** t)) / ((m2 / (1 - b2 ** t)).sqrt() + eps)
    delta[active] -= step[active]
    norms = delta.norm(dim=-1)
    scale = torch.where(active & (norms > max_norm), max_norm / norms.clamp_min(1e-30), torch.ones_like(norms))
    delta.mul_(scale[:, None])
    delta.grad = None


def optimise_targets(lm: Any, rows: EditRows, hook: str, layer: int, init: Float[torch.Tensor, "fact d_model"], *,
                     steps: int, lr: float, weight_decay: float, clamp_norm_factor: float, kl_factor: float,
                     early_stop_loss: float = 5e-2, facts: Sequence[Fact] | None = None,
                     kl_position: str = "subject_last") -> TargetResult:
    """Optimise one ``delta`` per fact added at ``hook`` (in block ``layer``) at the subject's last token.

    ``kl_position``: where the KL term's next-token distribution of ``"{subject} is a"`` is read --
    ``"subject_last"`` (the subject's last token: the lookup index, as kmeng01/rome's and
    kmeng01/memit's ``compute_v`` / ``compute_z`` do) or ``"prompt_last"`` (the prompt's last token).

    Facts that stop early leave the batch: later steps run only the rows of facts still optimising.
    """
    n, d = init.shape
    R = rows.ids.shape[0]
    runner = _Runner(lm, rows.ids, layer)
    dev = lm.device  # the optimisation's bookkeeping lives with the activations
    rows, init = rows.to(dev), init.to(dev)
    delta = torch.zeros(n, d, dtype=init.dtype, device=dev, requires_grad=True)
    m1, m2 = torch.zeros(n, d, dtype=init.dtype, device=dev), torch.zeros(n, d, dtype=init.dtype, device=dev)
    init_norm = init.norm(dim=-1)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    final_loss, final_nll, used = [float("nan")] * n, [float("nan")] * n, [steps] * n
    counts = (torch.bincount(rows.tgt_row, minlength=R).clamp_min(1).double(),
              torch.bincount(rows.owner[~rows.is_kl], minlength=n).double().clamp_min(1),
              torch.bincount(rows.owner[rows.is_kl], minlength=n).double().clamp_min(1))
    kl_init: dict[int, torch.Tensor] = {}  # global row -> initial log-probs of its KL position
    t = 0
    for it in range(steps):
        nll, kl = _forward_losses(lm, rows, runner, hook, delta, active, kl_init, kl_position, counts)
        wd = weight_decay * delta.norm(dim=-1).double() / init_norm.double() ** 2
        loss = nll + kl_factor * kl + wd
        lv, nv = loss.detach(), nll.detach()
        bad = active & ~torch.isfinite(lv)
        if bad.any():
            i = int(bad.nonzero()[0])
            who = facts[i].subject if facts is not None else i
            raise EditOptimisationError(
                f"target optimisation diverged (loss {float(lv[i])}) at step {it} for fact {who!r}; "
                f"no weights were changed -- lower the learning rate (lr={lr})")
        finishing = active & ((lv < early_stop_loss) | (it == steps - 1))
        for i in finishing.nonzero().squeeze(1).tolist():
            final_loss[i], final_nll[i], used[i] = float(lv[i]), float(nv[i]), it
        active &= ~finishing
        if not active.any():
            break
        (loss * active.double()).sum().backward()
        t += 1
        _adam_step(delta, m1, m2, t, active, lr, clamp_norm_factor * init_norm)
    return TargetResult(delta=delta.detach().cpu(), init=init.cpu(), loss=final_loss, nll=final_nll,
                        target_prob=[float(torch.exp(torch.tensor(-x))) for x in final_nll], steps=used)
