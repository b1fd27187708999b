"""Fact vectors: a counterfactual fact written into the activations, as a steering vector.

To put the activation mechanism on the same facts as weight edits, KV memories and RAG, each
fact gets the *in-context vector* of its reference text (Liu et al. 2024, "In-context Vectors:
Making In Context Learning More Effective and Controllable Through Latent Space Steering"; the
same idea as the task/function vectors of Hendel et al. 2023 and Todd et al. 2024): the change
that reading the reference makes to the residual stream at the prompt's last token,

    v_f = h_L(reference ⊕ prompt)[-1] - h_L(prompt)[-1]      at ``blocks.L.hook_resid_post``,

fitted on the fact's edit prompt only (paraphrases and neighbourhood prompts stay held out). It
is a :class:`~lens_memory.steer.vector.SteeringVector` added at every position (ActAdd / ICV
style) with strength 1 by default, so it also acts on unrelated prompts -- neighbourhood scores
measure that leak.

The layer matters, and it is chosen on the dev split (``analyses/bench_fact_vector_dev.py``: 20 known
built-in dev facts, strength 1, each vector applied alone to its own fact; efficacy / paraphrase /
neighbourhood, ROME's S = their harmonic mean):

    layer     4-10          11                   12                   14                   16
    E/P/N     0 / 0 / ~1.0  0.85 / 0.93 / 0.14   1.00 / 1.00 / 0.01   1.00 / 1.00 / 0.07   1.00 / 0.97 / 0.09
    S         0             0.319                0.029                0.184                0.228

Up to layer 10 the vector does nothing; from layer 11 on it carries the answer -- and forces it on every
prompt, because a steering vector does not depend on the subject. Layer 11 has the best S on dev and is
Gemma 3 270M's default (:data:`MODEL_LAYERS`); on the test split (30 known facts) it gives efficacy 0.83
[0.70, 0.97], paraphrase 0.82 [0.68, 0.95], neighbourhood 0.15 [0.04, 0.26], S 0.335. Models without a
dev-chosen layer use the layer two thirds of the way up.

Fidelity. Reference code: ``shengliu66/ICV`` (``tasks/base.py::obtain_icv``, ``utils/llm_layers.py``).
Deviations, and why:

* **One demonstration: context versus no context.** ICV encodes each demonstration's input and target
  separately and takes, at every layer, the difference of their last-token states, over k demonstrations.
  The first principal component of those differences is the vector. Here a fact has one reference, and
  the "demonstration" is the fact's own prompt read with and without that reference before it. There is
  no PCA, because a single difference has nothing to reduce.
* **Same tokens as the KV memory, not as RAG.** The read-with-reference input is ``BOS + reference +
  prompt``, the concatenated token lists with no separator. This is the token sequence a dense KV memory
  of the reference gives. The RAG prompt has one ``"\\n\\n"`` token more (see :mod:`lens_memory.rag`).
* **One layer, raw difference.** ICV changes the MLP output of *every* layer. It adds the unit vector,
  scaled by lambda and a cosine term, to the normalised MLP output, then restores that output's norm.
  Here the raw difference is added to one layer's residual stream (``blocks.L.hook_resid_post``) at every
  position, with strength 1 and no renormalisation. That makes it a plain
  :class:`~lens_memory.steer.vector.SteeringVector`, which goes through the same steering code and
  evaluation as CAA.
* **Measured effect** (30 known dev facts, each vector applied alone to its own fact, layer 12, strength 1,
  measured before the layer was re-chosen): efficacy 1.00, paraphrase 1.00, neighbourhood 0.007 [-0.006,
  0.020]. The same facts read as text (RAG) or as a dense KV memory keep neighbourhood at 0.91 / 0.90.
  Fitting took 6.4 s for the 30 facts on one CPU thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from ..errors import LensMemoryError
from .vector import POSITION_MODES, SteeringVector

__all__ = ["FactVectorConfig", "fact_vectors", "default_layer", "MODEL_LAYERS"]

#: layers chosen on the dev split by ``analyses/bench_fact_vector_dev.py`` (best ROME S), per model
MODEL_LAYERS: dict[str, int] = {"gemma-3-270m": 11}


@dataclass(frozen=True)
class FactVectorConfig:
    """``layer``: residual stream read and steered (``None``: :func:`default_layer`)."""

    layer: int | None = None
    positions: str = "all"

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise LensMemoryError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")


def default_layer(lm: Any) -> int:
    """The dev-chosen layer for known models (:data:`MODEL_LAYERS`), else two thirds of the way up."""
    return MODEL_LAYERS.get(lm.name, (2 * lm.n_layers) // 3)


@torch.no_grad()
def _last_resid(lm: Any, text_ids: torch.Tensor, layer: int) -> torch.Tensor:
    st = lm.stack
    h = st.run(st.embed(text_ids[None].to(lm.device)), stop=layer + 1)
    return h[0, -1].double().cpu()


def fact_vectors(lm: Any, facts: Sequence[Any], references: Sequence[str],
                 config: FactVectorConfig | None = None) -> list[SteeringVector]:
    """One in-context vector per fact (``references[i]`` is fact ``i``'s counterfactual text)."""
    cfg = config or FactVectorConfig()
    facts, references = list(facts), list(references)
    if not facts or len(facts) != len(references):
        raise LensMemoryError(f"fact_vectors needs one reference per fact: {len(facts)} facts, "
                              f"{len(references)} references")
    layer = lm.check_layer(default_layer(lm) if cfg.layer is None else cfg.layer)
    out = []
    for f, ref in zip(facts, references):
        if not ref.strip():
            raise LensMemoryError(f"empty reference for fact {f.subject!r}")
        q = lm.encode(f.prompt)
        r = lm.encode(ref)
        with_ref = torch.cat([r, q[1:]])  # one BOS, reference then prompt (as RAG reads it, without a template)
        v = _last_resid(lm, with_ref, layer) - _last_resid(lm, q, layer)
        out.append(SteeringVector("fact_vector", {layer: v.float()}, behavior=f"fact:{f.subject}",
                                  config={**asdict(cfg), "layer": layer}, model=lm.identity.to_dict(),
                                  info={"reference": ref, "prompt": f.prompt, "norm": float(v.norm())},
                                  default_positions=cfg.positions))
    return out
