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
from .behaviors import load_behavior
from .caa import CAAConfig, caa, default_layer, resid_hook
from .evaluate import PromptingBaseline, SteerEvalConfig, evaluate_steering

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
    from .sae import SAETrainConfig, TrainedSAE, load_pretrained_sae, train_sae

    if spec in (None, "train"):
        cfg = SAETrainConfig(layer=layer, n_tokens=60_000, eval_tokens=2048) if quick else SAETrainConfig(layer=layer)
        return train_sae(lm, cfg, progress=progress)
    if Path(spec).exists():
        return TrainedSAE.load(spec, lm)
    if ":" in spec:
        release, sae_id = spec.split(":", 1)
        return load_pretrained_sae(release, sae_id, lm)
    raise LensMemoryError(f"--sae {spec!r} is neither 'train', a saved SAE directory nor RELEASE:SAE_ID")


def run_steering(lm: Any, method: str, behavior: str, out: str | Path | None = None, *, layer: int | None = None,
                 strengths: Sequence[float] | None = None, eval_cfg: SteerEvalConfig | None = None,
                 sae: Any = None, baseline: bool = True, decompose_k: int = 20, progress: bool = True,
                 quick: bool = False) -> dict[str, Any]:
    """Fit ``method`` on ``behavior``, evaluate it (and the prompting baseline) and write results to ``out``.

    Returns the summary (also written as ``out/summary.json``).
    """
    from .. import viz
    from ..io import write_json

    if method not in METHODS:
        raise LensMemoryError(f"unknown steering method {method!r} (choose from {', '.join(METHODS)})")
    b = load_behavior(behavior)
    layer = default_layer(lm) if layer is None else lm.check_layer(layer)
    eval_cfg = eval_cfg or SteerEvalConfig(strengths=tuple(strengths or DEFAULT_STRENGTHS[method]))
    out = Path(out) if out is not None else None
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {"command": "steer", "method": method, "behavior": b.name, "layer": layer}

    t = time.time()
    vec_caa = caa(lm, b, CAAConfig(layers=(layer,)))
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
    if method == "caa":
        artifact = vec_caa
    elif method == "sta":
        from .sta import sta

        artifact = sta(lm, b, trained_sae, layer)
        summary["n_features"] = artifact.info["n_features"]
    else:
        from .lm_steer import LMSteerConfig, lm_steer

        artifact = lm_steer(lm, b, LMSteerConfig(epochs=2) if quick else LMSteerConfig(), progress=progress)
        summary["layer"] = None
        summary["hook"] = artifact.hook
        summary["interpretation"] = artifact.interpret(lm)
    seconds["fit"] = time.time() - t + (seconds["caa"] if method == "caa" else 0.0)

    t = time.time()
    ev = evaluate_steering(lm, b, artifact, eval_cfg, progress=progress)
    seconds["evaluate"] = time.time() - t
    summary.update({k: v for k, v in ev.summary().items() if k not in ("method", "behavior", "layers")})
    evals = [ev]
    if baseline and b.prompting:
        t = time.time()
        base = evaluate_steering(lm, b, PromptingBaseline(b), eval_cfg, progress=progress)
        seconds["baseline"] = time.time() - t
        evals.append(base)
        summary["prompting_baseline"] = {k: v for k, v in base.summary().items()
                                         if k in ("behavior_score", "target_prob", "fluency", "distinct_2")}
    decomposition = None
    if trained_sae is not None and method in ("caa", "sta"):
        from .decompose import decompose

        from .activations import contrast_activations

        hook = resid_hook(layer)
        contrast = contrast_activations(lm, b.train, [hook])[hook]
        # labels from the behaviour's own examples: the offline documentation corpus has little sentiment in it
        decomposition = decompose(artifact, trained_sae, k=decompose_k, lm=lm, contrast=contrast, label=True,
                                  label_tokens=4096 if quick else 16384, label_corpus=b.texts())
        summary["decomposition"] = {"explained_top5": decomposition.explained(min(5, decompose_k)),
                                    "explained_top20": decomposition.explained(min(20, decompose_k)),
                                    "top_features": [{"feature": f, "fraction": fr, "label": decomposition.label(f),
                                                      "activation_diff": (decomposition.activation_diff[i]
                                                                          if decomposition.activation_diff else None)}
                                                     for i, (f, fr) in enumerate(list(zip(decomposition.features,
                                                                                          decomposition.fractions))[:10])]}
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["model"] = lm.identity.to_dict()
    summary["eval_config"] = eval_cfg.to_dict()
    summary["config"] = dict(getattr(artifact, "config", {}) or {})
    if out is not None:
        artifact.save(out / "artifact")
        if method != "caa":
            vec_caa.save(out / "caa_vector")
        ev.save(out / "evaluation")
        if len(evals) > 1:
            evals[1].save(out / "baseline")
        ev.to_dataframe().to_csv(out / "steering.csv", index=False)
        viz.save_figure(viz.plot_steering_tradeoff(evals), out / "figures" / "steering_tradeoff")
        if decomposition is not None:
            decomposition.save(out / "decomposition")
            viz.save_figure(decomposition.plot(), out / "figures" / "decomposition")
        write_json(out / "summary.json", summary)
    return summary
