"""Sparse autoencoders (SAEs) on the residual stream: load them, train them offline, measure them.

What an SAE is. An SAE rewrites an activation ``x`` (``d_in`` numbers, e.g. the residual stream
after a block) as a sparse, non-negative combination of ``d_sae >> d_in`` learned directions::

    f  = act(W_enc (x - b_dec) + b_enc)      # feature activations, mostly zero
    x̂  = W_dec f + b_dec                     # the reconstruction

trained to reconstruct ``x`` while few features are active at a time (an L1 penalty, or only
the ``k`` largest kept: TopK, Gao et al. 2024). Its features are far more often monosemantic
than neurons (Bricken et al. 2023, *Towards Monosemanticity*; Cunningham et al. 2023, *Sparse
Autoencoders Find Highly Interpretable Features in Language Models*), which is what steering
needs to decompose a vector into readable parts (:mod:`lens_memory.steer`). Every SAE here is a
`sae-lens <https://github.com/jbloomAus/SAELens>`_ ``SAE`` object (``sae.encode``,
``sae.decode``, ``sae.cfg``); sae-lens is imported only when an SAE is first used.

How it is used::

    from lens_memory.sae import (GEMMA_SCOPE_RELEASE, SAETrainConfig, TrainedSAE, load_pretrained_sae,
                                 sae_quality, train_sae)

    t = train_sae(model, SAETrainConfig(layer=6))   # offline; cached under <cache>/sae
    t.quality                                       # explained variance, L0, dead features, loss recovered
    f = t.feature_acts(model, ids)                  # [batch pos d_sae]
    t.save("runs/sae_l6"); TrainedSAE.load("runs/sae_l6", model)
    sae = load_pretrained_sae(GEMMA_SCOPE_RELEASE, "layer_9_width_16k_l0_medium", model)  # online
    sae_quality(model, sae)                         # measure a pretrained SAE before trusting it

Modules, one concept each:

* :mod:`.config` -- :class:`SAETrainConfig` (validated; :class:`SAEConfigError` names the bad
  value) and :func:`resid_post_hook`;
* :mod:`.features` -- :func:`check_sae` (refuses an SAE whose width, hook or model does not fit,
  :class:`SAEMismatchError`) and :func:`feature_acts`;
* :mod:`.quality` -- :class:`SAEQuality`, :func:`sae_quality` (explained variance, L0, dead
  fraction, loss recovered when the reconstruction is spliced in);
* :mod:`.artifact` -- :class:`TrainedSAE`: an SAE with config, quality and provenance; saved
  with :func:`~lens_memory.artifacts.save_artifact` (kind ``trained_sae``) in a directory that
  sae-lens can also load; the layout written before that is still read;
* :mod:`.training` -- :func:`train_sae` (sae-lens's ``SAETrainer`` on collected activations,
  BOS excluded) and the cache of trained SAEs;
* :mod:`.pretrained` -- :func:`load_pretrained_sae`, :func:`pretrained_sae_ids`,
  :data:`GEMMA_SCOPE_RELEASE` (Gemma Scope 2 for the embedded Gemma 3 270M; Lieberum et al. 2024).

This package used to be ``lens_memory.steer.sae``; that name still works but warns.
"""

from __future__ import annotations

from .artifact import TrainedSAE
from .config import SAEConfigError, SAETrainConfig, resid_post_hook
from .features import SAEMismatchError, check_sae, feature_acts
from .pretrained import GEMMA_SCOPE_RELEASE, load_pretrained_sae, pretrained_sae_ids
from .quality import SAEQuality, sae_quality
from .training import train_sae

__all__ = ["SAETrainConfig", "SAEQuality", "TrainedSAE", "SAEConfigError", "SAEMismatchError", "train_sae",
           "sae_quality", "check_sae", "feature_acts", "load_pretrained_sae", "pretrained_sae_ids",
           "resid_post_hook", "GEMMA_SCOPE_RELEASE"]
