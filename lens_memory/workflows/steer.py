"""The steering workflow end to end, as used by ``lens-memory steer`` and the report.

fit (CAA, STA with an SAE, or LM-Steer) -> evaluate over strengths (and the prompting baseline)
-> decompose the vector into SAE features -> write artifacts, figures and ``summary.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import LensMemoryError
from ..steer.behaviors import load_behavior
from ..steer.caa import CAAConfig, caa, default_layer, resid_hook
from ..steer.evaluate import PromptingBaseline, SteerEvalConfig, evaluate_steering

__all__ = ["run_steering", "DEFAULT_STRENGTHS", "METHODS", "get_sae"]

log = logging.getLogger(__name__)

METHODS = ("caa", "sta", "lmsteer")
#: Strengths per method, measured on Gemma 3 270M (sentiment): CAA and STA (rescaled to CAA's norm) in
#: multiples of the raw mean difference (beyond ±3 at layer 10 text degenerates and the score falls back);
#: LM-Steer in units of the trained ε (trained at ±1; at ±4 text collapses into repetition).
DEFAULT_STRENGTHS = {"caa": (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0), "sta": (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
                     "lmsteer": (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)}


def get_sae(lm: Any, layer: int, spec: str | None = None, *, quick: bool = False, progress: bool = True):
    """An SAE at ``blocks.{layer}.hook_resid_post``.

    ``spec``: ``None``/``"train"`` trains one offline (cached), ``"RELEASE:SAE_ID"`` loads a
    sae-lens release (online), or a directory saved by :meth:`TrainedSAE.save`.
    """
    from ..sae import SAETrainConfig, TrainedSAE, load_pretrained_sae, train_sae

    if spec in (None, "train"):
        cfg = SAETrainConfig(layer=layer, n_tokens=60_000, eval_tokens=2048) if quick else SAETrainConfig(layer=layer)
        return train_sae(lm, cfg, progress=progress)
    if Path(spec).exists():
        return TrainedSAE.load(spec, lm)
    if ":" in spec:
        release, sae_id = spec.split(":", 1)
        return load_pretrained_sae(release, sae_id, lm)
    raise LensMemoryError(f"--sae {spec!r} is neither 'train', a saved SAE directory nor RELEASE:SAE_ID")


def _fit(lm: Any, method: str, b: Any, layer: int, vec_caa: Any, trained_sae: Any, sta_cfg: Any, quick: bool,
         progress: bool, summary: dict[str, Any]) -> Any:
    """The artifact of ``method`` (CAA's vector is fitted already); adds its facts to ``summary``."""
    if method == "caa":
        return vec_caa
    if method == "sta":
        from ..steer.sta import sta

        artifact = sta(lm, b, trained_sae, layer, sta_cfg)
        summary["n_features"] = artifact.info["n_features"]
        summary["n_features_reference_rule"] = artifact.info["n_reference"]
        return artifact
    from ..steer.lm_steer import LMSteerConfig, lm_steer

    artifact = lm_steer(lm, b, LMSteerConfig(epochs=2) if quick else LMSteerConfig(), progress=progress)
    summary.update({"layer": None, "hook": artifact.hook, "interpretation": artifact.interpret(lm)})
    return artifact


def _decomposition(lm: Any, b: Any, artifact: Any, trained_sae: Any, layer: int, k: int, quick: bool) -> Any:
    """The artifact in SAE features, labelled by the behaviour's own examples."""
    from ..steer.activations import contrast_activations
    from ..steer.decompose import decompose

    hook = resid_hook(layer)
    contrast = contrast_activations(lm, b.train, [hook])[hook]
    # labels from the behaviour's own examples: the offline documentation corpus has little sentiment in it
    return decompose(artifact, trained_sae, k=k, lm=lm, contrast=contrast, label=True,
                     label_tokens=4096 if quick else 16384, label_corpus=b.texts())


def _decomposition_summary(dec: Any, k: int) -> dict[str, Any]:
    diff = dec.activation_diff
    return {"method": dec.method, "explained_top5": dec.explained(min(5, k)),
            "explained_top20": dec.explained(min(20, k)),
            "top_features": [{"feature": f, "fraction": fr, "label": dec.label(f),
                              "activation_diff": diff[i] if diff else None}
                             for i, (f, fr) in enumerate(list(zip(dec.features, dec.fractions))[:10])]}


def _write(out: Path, summary: dict[str, Any], artifact: Any, vec_caa: Any, evals: list, decomposition: Any) -> None:
    from .. import viz
    from ..io import write_json

    artifact.save(out / "artifact")
    if artifact is not vec_caa:
        vec_caa.save(out / "caa_vector")
    evals[0].save(out / "evaluation")
    if len(evals) > 1:
        evals[1].save(out / "baseline")
    evals[0].to_dataframe().to_csv(out / "steering.csv", index=False)
    viz.save_figure(viz.plot_steering_tradeoff(evals), out / "figures" / "steering_tradeoff")
    if decomposition is not None:
        decomposition.save(out / "decomposition")
        viz.save_figure(decomposition.plot(), out / "figures" / "decomposition")
    write_json(out / "summary.json", summary)


def run_steering(lm: Any, method: str, behavior: str, out: str | Path | None = None, *, layer: int | None = None,
                 strengths: Sequence[float] | None = None, eval_cfg: SteerEvalConfig | None = None,
                 sae: Any = None, baseline: bool = True, decompose_k: int = 20, progress: bool = True,
                 quick: bool = False, caa_form: str = "completion_mean",
                 sta_cfg: Any = None) -> dict[str, Any]:
    """Fit ``method`` on ``behavior``, evaluate it (and the prompting baseline) and write results to ``out``.

    ``caa_form`` is CAA's form (:data:`~lens_memory.steer.caa.FORMS`), ``sta_cfg`` an
    :class:`~lens_memory.steer.sta.STAConfig`. The evaluation runs on ``eval_cfg.split`` of the
    behaviour's prompts (``"test"`` by default), recorded as ``summary["split"]``.
    Returns the summary (also written as ``out/summary.json``).
    """
    if method not in METHODS:
        raise LensMemoryError(f"unknown steering method {method!r} (choose from {', '.join(METHODS)})")
    b = load_behavior(behavior)
    layer = default_layer(lm) if layer is None else lm.check_layer(layer)
    eval_cfg = eval_cfg or SteerEvalConfig(strengths=tuple(strengths or DEFAULT_STRENGTHS[method]))
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {"command": "steer", "method": method, "behavior": b.name, "layer": layer,
                               "caa_form": caa_form}
    t = time.time()
    vec_caa = caa(lm, b, CAAConfig(layers=(layer,), form=caa_form))
    seconds["caa"] = time.time() - t
    trained_sae = None
    if method == "sta" or sae is not None:
        t = time.time()
        trained_sae = sae if (sae is not None and not isinstance(sae, str)) else get_sae(lm, layer, sae, quick=quick,
                                                                                            progress=progress)
        seconds["sae"] = time.time() - t
        q = getattr(trained_sae, "quality", None)
        summary["sae"] = {"hook": resid_hook(layer), "d_sae": int(getattr(trained_sae, "sae", trained_sae).W_dec.shape[0]),
                          "quality": q.to_dict() if q is not None else None}
    t = time.time()
    artifact = _fit(lm, method, b, layer, vec_caa, trained_sae, sta_cfg, quick, progress, summary)
    seconds["fit"] = time.time() - t + (seconds["caa"] if method == "caa" else 0.0)
    t = time.time()
    evals = [evaluate_steering(lm, b, artifact, eval_cfg, progress=progress)]
    seconds["evaluate"] = time.time() - t
    summary.update({k: v for k, v in evals[0].summary().items() if k not in ("method", "behavior", "layers")})
    if baseline and b.prompting:
        t = time.time()
        evals.append(evaluate_steering(lm, b, PromptingBaseline(b), eval_cfg, progress=progress))
        seconds["baseline"] = time.time() - t
        summary["prompting_baseline"] = {k: v for k, v in evals[1].summary().items()
                                         if k in ("behavior_score", "target_prob", "fluency", "distinct_2")}
    decomposition = None
    if trained_sae is not None and method in ("caa", "sta"):
        decomposition = _decomposition(lm, b, artifact, trained_sae, layer, decompose_k, quick)
        summary["decomposition"] = _decomposition_summary(decomposition, decompose_k)
    summary.update({"seconds": {k: round(v, 1) for k, v in seconds.items()}, "model": lm.identity.to_dict(),
                    "eval_config": eval_cfg.to_dict(), "config": dict(getattr(artifact, "config", {}) or {})})
    if out is not None:
        _write(Path(out), summary, artifact, vec_caa, evals, decomposition)
    return summary
