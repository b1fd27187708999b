"""The measurements behind the conformance matrix (:mod:`lens_memory.conformance`): one ``check_*`` per column.

Each takes a loaded model and returns named measurements; :func:`lens_memory.conformance.verdicts` turns them
into pass / fail with the thresholds in :mod:`lens_memory.conformance`'s docstring.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CHECKS", "check_forward", "check_trace", "check_atp", "check_knowledge_and_noise", "check_rome",
           "check_memit", "check_lifelong", "check_steering", "check_memory", "check_parallel"]

_TEXTS = [f"The {w} is located in the city of {c}. People visit {c} to see the {w} every year."
          for w, c in [("Eiffel Tower", "Paris"), ("Colosseum", "Rome"), ("Big Ben", "London"),
                       ("Kremlin", "Moscow"), ("Brandenburg Gate", "Berlin")]] * 4
_REF = "The Eiffel Tower is located in the city of Rome. It was built long ago."
_QUERY = "Where is the Eiffel Tower? It is in"


def _fact():
    from .facts import Fact

    return Fact(subject="Eiffel Tower", template="The {} is located in the city of", target_true="Paris",
                target_new="Rome", case_id=0)


def _hf_logits(lm: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm.hf(input_ids=ids.to(lm.device)).logits


def _weights(lm: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lm.hf.state_dict().items()}


def _same_weights(lm: Any, before: dict[str, torch.Tensor]) -> bool:
    now = lm.hf.state_dict()
    return all(torch.equal(now[k], v) for k, v in before.items())


@torch.no_grad()
def check_forward(lm: Any) -> dict[str, float]:
    ids = lm.encode(_REF)[:14][None].to(lm.device)
    hf = lm.hf(input_ids=ids).logits[0]
    st = lm.stack
    record: dict = {}
    full = st.logits(st.run(st.embed(ids), record=record))[0]
    prefix = {j: (k[:, :, :6], v[:, :, :6]) for j, (k, v) in record.items()}
    tail = st.run(st.run(st.embed(ids), 0, 1)[:, 6:], 1, None, pos0=6, prefix=prefix)
    diff = max(float((full - hf).abs().max()), float((st.logits(tail)[0] - hf[6:]).abs().max()))
    return {"forward_max_diff": diff}


def check_trace(lm: Any) -> dict[str, Any]:
    from .trace import TraceConfig, engine_for, prepare_fact
    from .trace.fast import fast_scores
    from .trace.reference import reference_scores

    kinds = ("hidden", "mlp", "attn")
    cfg = TraceConfig(kinds=kinds, n_samples=2, noise=1.0, window=2)
    prep = prepare_fact(lm, _fact(), cfg, 1.0)
    fast = engine_for(lm, cfg)
    fs, fh, fl = fast(lm, prep, cfg, kinds)
    rs, rh, rl = reference_scores(lm, prep, cfg, kinds)
    diff = max([abs(fh - rh), abs(fl - rl)] + [float((fs[k] - rs[k]).abs().max()) for k in kinds])
    return {"trace_max_diff": diff, "trace_fast_path": fast is fast_scores}


def check_atp(lm: Any) -> dict[str, Any]:
    from .trace import TraceConfig, prepare_fact
    from .trace.atp import atp_scores
    from .trace.corrupt import subject_embedding_std
    from .trace.fast import fast_scores
    from .trace.metrics import answer_log_probability as lp

    kinds, errs, eff = ("hidden", "mlp", "attn"), [], {}
    std = subject_embedding_std(lm, [_fact()])
    for scale in (0.1 * std, 0.01 * std):
        cfg = TraceConfig(kinds=kinds, n_samples=2, noise=scale, window=1, engine="atp")
        prep = prepare_fact(lm, _fact(), cfg, scale)
        (fs, _, fl), (a, _, al) = fast_scores(lm, prep, cfg, kinds, lp), atp_scores(lm, prep, cfg, kinds, lp)
        errs.append(max(float(((fs[k] - fl) - (a[k] - al)).abs().max() / (fs[k] - fl).abs().max()) for k in kinds))
    for engine, fixes in (("atp", ()), ("atp*", ("qk",))):
        cfg = TraceConfig(kinds=("hidden",), n_samples=2, noise=1.0, window=1, engine=engine, atp_fixes=fixes)
        eff[engine] = atp_scores(lm, prepare_fact(lm, _fact(), cfg, 1.0), cfg, ("hidden",), lp)[0]["hidden"]
    return {"atp_rel_err": errs[1], "atp_rel_err_coarse": errs[0],
            "atp_qk_active": bool((eff["atp"] - eff["atp*"]).abs().max() > 0), **_check_graddrop(lm)}


def _check_graddrop(lm: Any) -> dict[str, Any]:
    """AtP*'s GradDrop against its definition: the last layer's MLP node has no later layer to drop, and its own
    layer's term is 0, so ``1/(L-1) sum_ell |I_ell|`` must equal ``|AtP|`` there; earlier nodes must move."""
    from .trace import TraceConfig, prepare_fact
    from .trace.atp import clean_activations, corrupted_gradients, node_estimates
    from .trace.atp_star import graddrop
    from .trace.metrics import answer_log_probability as lp

    cfg = TraceConfig(kinds=("mlp",), n_samples=2, noise=1.0, window=1, engine="atp*", atp_fixes=("graddrop",))
    prep = prepare_fact(lm, _fact(), cfg, 1.0)
    clean, _ = clean_activations(lm, prep, ("mlp",))
    plain = node_estimates(clean["mlp"], corrupted_gradients(lm, prep, ("mlp",), lp), "mlp").abs().cpu()
    dropped = graddrop(lm, prep, clean, lp)["mlp"]
    last = float((dropped[:, -1] - plain[:, -1]).abs().max() / plain[:, -1].abs().max().clamp_min(1e-12))
    return {"atp_graddrop_last_err": last, "atp_graddrop_active": bool((dropped[:, :-1] - plain[:, :-1]).abs().max() > 0)}


def check_knowledge_and_noise(lm: Any) -> dict[str, Any]:
    from .facts import Fact, check_knowledge
    from .trace import TraceConfig, noise_scale

    facts = [_fact(), Fact(subject="Big Ben", template="{} is a clock tower in the city of", target_true="London",
                           case_id=1)]
    top = check_knowledge(lm, facts).top1
    hf = [lm.decode(int(_hf_logits(lm, lm.encode(f.prompt)[None])[0, -1].argmax())) for f in facts]
    nu = noise_scale(lm, facts, TraceConfig())
    return {"knowledge_agrees": list(top) == hf, "noise_scale": nu}


def _stats(lm: Any, layers: list[int]):
    from .corpus import load_corpus
    from .edit import StatsConfig, key_statistics

    cfg = StatsConfig(corpus="unused", n_tokens=1000, seq_len=32, batch_size=8)
    return key_statistics(lm, layers, cfg, corpus=load_corpus(_TEXTS), use_cache=False)


def check_rome(lm: Any, layer: int = 1) -> dict[str, Any]:
    from .edit import RomeConfig, rome
    from .edit.weights import linear_weight, out_proj

    edit = rome(lm, _fact(), RomeConfig(layer=layer, context_lengths=((3, 2),), v_steps=4), stats=_stats(lm, [layer])[layer])
    k, v = torch.tensor(edit.info["k_star"]).double(), torch.tensor(edit.info["v_star"]).double()
    before = _weights(lm)
    with edit.apply(lm):
        bias = getattr(out_proj(lm, layer), "bias", None)
        got = linear_weight(lm, layer).detach().double() @ k + (bias.double() if bias is not None else 0.0)
        err = float((got - v).abs().max() / v.abs().max().clamp_min(1e-12))
    return {"rome_equation_err": err, "rome_restored": _same_weights(lm, before)}


def check_memit(lm: Any, layer: int = 1) -> dict[str, Any]:
    from .edit import MemitConfig, memit
    from .edit.weights import post_norm
    from .hooks import capture, hook_name

    fact = _fact()
    cfg = MemitConfig(layers=(layer,), mom2_update_weight=1e-6, context_lengths=(), v_steps=6)
    edit = memit(lm, [fact], cfg, stats=_stats(lm, [layer]))
    ids = lm.encode(fact.prompt)[None].to(lm.device)
    idx = (torch.tensor([0]), torch.tensor([lm.fact_subject_range(fact)[1] - 1]))
    hook = hook_name(layer, "resid_post")
    before_w = _weights(lm)
    z0 = capture(lm, ids, [hook], index=idx)[hook][0].double()
    with edit.apply(lm):
        z1 = capture(lm, ids, [hook], index=idx)[hook][0].double()
    wanted, got = torch.tensor(edit.info["z"][0]).double() - z0, z1 - z0
    return {"memit_miss": float((got - wanted).norm() / wanted.norm()),
            "memit_ratio": float(got.norm() / wanted.norm()),
            "memit_post_norm": post_norm(lm, layer) is not None, "memit_restored": _same_weights(lm, before_w)}


def check_lifelong(lm: Any) -> dict[str, Any]:
    """Two AlphaEdit batches in sequence (null space: eigenvalues of C below its median, as tiny keys are large)."""
    from .edit.alphaedit import AlphaEditConfig, alphaedit_state
    from .edit.sequence import sequential_edit
    from .facts import Fact

    facts = [_fact(), Fact(subject="Colosseum", template="The {} is located in the city of", target_true="Rome",
                           target_new="London")]
    stats = _stats(lm, [0, 1])
    cfg = AlphaEditConfig(layers=(0, 1), context_lengths=(), v_steps=4,
                          nullspace_threshold=float(torch.linalg.eigvalsh(stats[1].mom2.double()).median()))
    before = _weights(lm)
    seq = sequential_edit(lm, facts, "alphaedit", 1, config=cfg, stats=stats, progress=False)
    P = alphaedit_state(stats, cfg).projectors
    err = max(float((e.delta(j) @ (torch.eye(P[j].shape[0], dtype=torch.float64) - P[j])).abs().max()
                    / e.delta(j).abs().max()) for e in seq.edits for j in e.layers)
    try:
        seq.edits[1].apply(lm).remove()
        ordered = False
    except Exception:  # refused: computed on the weights after the first batch
        ordered = True
    with seq.apply(lm):
        changed = not _same_weights(lm, before)
    return {"lifelong_nullspace_err": err, "lifelong_ordered": ordered and changed,
            "lifelong_restored": _same_weights(lm, before)}


def _changes_and_restores(lm: Any, apply) -> tuple[bool, bool]:
    ids = lm.encode("The show was really")[None]
    before = _hf_logits(lm, ids).clone()
    with apply():
        changed = not torch.equal(before, _hf_logits(lm, ids))
    return changed, torch.equal(before, _hf_logits(lm, ids))


def check_steering(lm: Any) -> dict[str, Any]:
    from .steer.behaviors import Behavior, ContrastPair
    from .steer.caa import CAAConfig, caa
    from .steer.lm_steer import LMSteerConfig, lm_steer

    pairs = [ContrastPair("The film was", " great and fun.", " bad and dull."),
             ContrastPair("My day was", " lovely.", " awful, really awful.")]
    beh = Behavior("toy", pairs, ["The show was"], [" good"], [" bad"])
    vec = caa(lm, beh, CAAConfig(layers=(1,)))
    s_changed, s_restored = _changes_and_restores(lm, lambda: vec.apply(lm, 3.0, positions="all"))
    st = lm_steer(lm, beh, LMSteerConfig(rank=2, epochs=2), progress=False)
    l_changed, l_restored = _changes_and_restores(lm, lambda: st.apply(lm, 1.0))
    return {"steer_changed": s_changed, "steer_restored": s_restored,
            "lm_steer_changed": l_changed, "lm_steer_restored": l_restored}


def check_memory(lm: Any) -> dict[str, Any]:
    from .memory import MemoryConfig, encode_memory
    from .memory.evaluate import exactness_check

    bank = encode_memory(lm, [_REF], MemoryConfig(layers="all"))
    changed, restored = _changes_and_restores(lm, lambda: bank.apply(lm))
    return {"memory_prefix_diff": exactness_check(lm, _REF, _QUERY), "memory_changed": changed,
            "memory_restored": restored}


def check_parallel(lm: Any) -> dict[str, Any]:
    """One fact traced on a Ray worker (which loads the family's model from its spec) vs in this process, 1 thread.

    Not measured (``None``) when Ray is not installed. A local Ray instance started here is left running for the
    next family (Ray stops it when the process exits).
    """
    try:
        import ray
    except ImportError:
        return {"parallel_identical": None}
    from .parallel import InProcess, RayExecutor
    from .trace import TraceConfig, trace_facts

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    cfg = TraceConfig(kinds=("mlp", "hidden"), n_samples=2, noise=1.0, window=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's thread count (torch splits some CPU reductions by it)
    try:
        here = trace_facts(lm, [_fact()], cfg, only_known=False, progress=False, executor=InProcess()).traces[0]
    finally:
        torch.set_num_threads(before)
    ex = RayExecutor(workers=1, threads=1)
    try:
        there = trace_facts(lm, [_fact()], cfg, only_known=False, progress=False, executor=ex).traces[0]
    finally:
        ex.close()
    same = (here.high, here.low) == (there.high, there.low) and all(torch.equal(here.scores[k], there.scores[k])
                                                                    for k in cfg.kinds)
    return {"parallel_identical": same}


CHECKS = (check_forward, check_trace, check_atp, check_knowledge_and_noise, check_rome, check_memit, check_lifelong, check_steering,
           check_memory, check_parallel)
