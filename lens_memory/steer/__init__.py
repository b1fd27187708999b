"""Steering through activations: steering vectors, sparse-autoencoder features, LM-Steer.

Workflow::

    b = load_behavior("sentiment")                       # contrast pairs, A/B items, dev/test prompts
    vec = caa(model, b, CAAConfig(layers=(6,)))            # an artifact; nothing changed yet
    vec_ab = caa(model, b, CAAConfig(layers=(6,), form="ab_letter"))   # the paper's A/B-letter form
    with vec.apply(model, strength=4.0):                 # hooks removed on exit: outputs exact
        generate(model, b.eval_prompts[:4])
    sae = train_sae(model, SAETrainConfig(layer=6))        # offline, cached (sae-lens SAE inside)
    vec_sta = sta(model, b, sae, layer=6)                  # SAE-feature-selected vector
    dec = decompose(vec, sae, lm=model, label=True)        # the vector in SAE features
    ev = evaluate_steering(model, b, vec)                  # on the test prompts: behaviour, fluency, side effects

Modules: :mod:`.behaviors` (data), :mod:`.activations` (answer-token activations), :mod:`.vector`
(the :class:`SteeringVector` artifact), :mod:`.caa`, :mod:`.sta`, :mod:`.lm_steer`, :mod:`.sae`
(load/train/measure SAEs), :mod:`.decompose`, :mod:`.scorers`, :mod:`.evaluate`, :mod:`.pipeline`.
"""

from __future__ import annotations

# Eager imports of our own light modules (sae-lens itself is imported only when an SAE is used),
# so that the functions ``caa``, ``sta``, ``lm_steer`` and ``decompose`` are not shadowed by the
# submodules of the same name.
from .._moved import moved
from .activations import ContrastActivations, contrast_activations
from .behaviors import ABItem, Behavior, BehaviorFormatError, ContrastPair, builtin_behaviors, load_behavior
from .caa import CAAConfig, LayerSweep, caa, caa_layer_sweep
from .decompose import Decomposition, decompose, edit_direction, label_features
from .evaluate import (PromptingBaseline, SteerEvalConfig, SteeringEvaluation, behavior_probability,
                       evaluate_steering)
from .lm_steer import LMSteer, LMSteerConfig, lm_steer
from ..sae import SAETrainConfig, TrainedSAE, check_sae, load_pretrained_sae, sae_quality, train_sae
from .sta import STAConfig, feature_differences, sta
from .vector import SteeringNaNError, SteeringVector

__all__ = ["ContrastActivations", "contrast_activations", "ABItem", "Behavior", "BehaviorFormatError", "ContrastPair",
           "builtin_behaviors", "load_behavior", "CAAConfig", "LayerSweep", "caa", "caa_layer_sweep", "Decomposition",
           "decompose", "edit_direction", "label_features", "PromptingBaseline", "SteerEvalConfig",
           "SteeringEvaluation", "behavior_probability", "evaluate_steering", "LMSteer", "LMSteerConfig", "lm_steer",
           "SAETrainConfig", "TrainedSAE", "check_sae", "load_pretrained_sae", "sae_quality",
           "train_sae", "STAConfig", "feature_differences", "sta", "SteeringNaNError", "SteeringVector"]

#: the steering workflow moved to lens_memory.workflows.steer; the old name warns for one release
__getattr__ = moved("lens_memory.steer", {"run_steering": "lens_memory.workflows.steer"})
