"""Benchmark: which SAE features STA keeps on the embedded model -- our rule against the reference's, one run.

Trains (or loads from the cache) the SAE the full report trains (``SAETrainConfig(layer=10)``: 4,096 TopK
features, 300k offline tokens), fits STA on the ``sentiment`` behaviour with EasyEdit2's trim 0.65
(:mod:`lens_memory.steer.sta`), and counts from that one fit: the features with a non-zero amplitude difference,
the features our rule keeps (a non-zero, sign-consistent score in the top fraction), the features the reference
rule keeps (its threshold falls to 0 when fewer than 35% of features score, so it admits every feature) and how
many of those carry a non-zero amplitude (the only ones that reach the vector); plus the cosine between our vector,
the reference rule's vector and the CAA vector of the same examples. The README's report section and fidelity row
quote these numbers.

Prints a table and, as the last line, one JSON object.

    python analyses/bench_sta_selection.py [--layer 10] [--trim 0.65]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--trim", type=float, default=0.65)
    ap.add_argument("--sae-tokens", type=int, default=None, help="SAE training tokens (default: the report's)")
    args = ap.parse_args()

    from lens_memory.models import load_model
    from lens_memory.sae import SAETrainConfig, train_sae
    from lens_memory.steer import load_behavior
    from lens_memory.steer.activations import contrast_activations
    from lens_memory.steer.sta import STAConfig, feature_differences, select_features, sta_from_activations

    lm = load_model(args.model)
    sae_cfg = SAETrainConfig(layer=args.layer, **({"n_tokens": args.sae_tokens} if args.sae_tokens else {}))
    sae = train_sae(lm, sae_cfg)
    b = load_behavior("sentiment")
    cfg = STAConfig(trim=args.trim)
    hook = f"blocks.{args.layer}.hook_resid_post"
    acts = contrast_activations(lm, b.train[:cfg.n_pairs] if cfg.n_pairs else b.train, [hook],
                                position=cfg.position, batch_size=cfg.batch_size)[hook]
    ours = sta_from_activations(lm, sae, acts, args.layer, b.name, cfg)
    ref_cfg = STAConfig(trim=args.trim, reference_zero_threshold=True)
    ref = sta_from_activations(lm, sae, acts, args.layer, b.name, ref_cfg)
    d = feature_differences(getattr(sae, "sae", sae), acts)
    nonzero = d.amplitude != 0
    ref_mask = select_features(d, ref_cfg)
    caa = acts.mean_difference().double()
    v_ours, v_ref = ours.vectors[args.layer].double(), ref.vectors[args.layer].double()
    cos = torch.nn.functional.cosine_similarity
    q = getattr(sae, "quality", None)
    q = dataclasses.asdict(q) if dataclasses.is_dataclass(q) else q
    out = {"model": args.model, "layer": args.layer, "trim": args.trim, "d_sae": int(d.amplitude.numel()),
           "sae_tokens": sae_cfg.n_tokens, "sae_quality": q,
           "nonzero_amplitude": int(nonzero.sum()), "kept_ours": ours.info["n_features"],
           "kept_reference": int(ref_mask.sum()), "kept_reference_nonzero": int((ref_mask & nonzero).sum()),
           "cos_ours_reference": round(float(cos(v_ours, v_ref, dim=0)), 4),
           "cos_ours_caa": round(float(cos(v_ours, caa, dim=0)), 4),
           "cos_reference_caa": round(float(cos(v_ref, caa, dim=0)), 4), "n_pairs": acts.n_pairs}
    print(f"SAE layer {args.layer}: {out['d_sae']} features, {out['nonzero_amplitude']} with a non-zero amplitude "
          f"difference")
    print(f"{'rule':10s} {'kept':>6s} {'reaching the vector':>20s} {'cos with CAA':>13s}")
    print(f"{'ours':10s} {out['kept_ours']:6d} {out['kept_ours']:20d} {out['cos_ours_caa']:13.3f}")
    print(f"{'reference':10s} {out['kept_reference']:6d} {out['kept_reference_nonzero']:20d} "
          f"{out['cos_reference_caa']:13.3f}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
