"""Configuration of causal tracing (validated, recorded with every result)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..hooks import hook_name, hook_template

__all__ = ["TraceConfig", "KINDS", "ENGINES", "ATP_FIXES", "SEVERED_KINDS", "restore_hooks", "restore_hook", "window_layers", "scaled_window",
           "REFERENCE_WINDOW", "REFERENCE_LAYERS"]

#: Restorations: the clean hidden state (residual stream after the block), MLP output, attention output.
KINDS = ("hidden", "mlp", "attn")
#: Hidden-state restoration with the MLP (or attention) outputs at the restored token frozen at their
#: corrupted values in every layer -- the "severed path" of Meng et al. (2022), Fig. 3.
SEVERED_KINDS = ("hidden_sever_mlp", "hidden_sever_attn")

#: how cells are scored: two exact engines and two gradient estimators (:mod:`lens_memory.trace.atp`)
ENGINES = ("fast", "reference", "atp", "atp*")
#: AtP*'s corrections (Kramár et al. 2024): attention saturation (QK fix) and cancellation (GradDrop)
ATP_FIXES = ("qk", "graddrop")

#: the hook site each kind restores (severed kinds restore the hidden state)
RESTORE_SITES = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def restore_site(kind: str) -> str:
    """The :data:`~lens_memory.hooks.SITES` site restored by ``kind``."""
    return RESTORE_SITES["hidden" if kind.startswith("hidden") else kind]


def restore_hook(kind: str, layer: int) -> str:
    """TransformerLens hook name restored by ``kind`` at ``layer``."""
    return hook_name(layer, restore_site(kind))


def restore_hooks(kind: str) -> str:
    """TransformerLens hook-name template restored by ``kind`` (``{}`` = layer; recorded in provenance)."""
    return hook_template(restore_site(kind)).format(layer="{}")


#: ROME's restoration window (Meng et al. 2022: 10 layers) and the depth of the model it was set for (GPT-2 XL).
REFERENCE_WINDOW = 10
REFERENCE_LAYERS = 48


def scaled_window(n_layers: int) -> int:
    """ROME's window at this depth: ``round(10 / 48 * n_layers)``, rounded half up, at least 1.

    ROME restores 10 of GPT-2 XL's 48 layers (about a fifth of the depth) together; scaling keeps
    that fraction, e.g. 4 of Gemma 3 270M's 18 layers, 3 of 12, 10 of 48.
    """
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    return max(1, (2 * REFERENCE_WINDOW * n_layers + REFERENCE_LAYERS) // (2 * REFERENCE_LAYERS))


def window_layers(kind: str, layer: int, window: int, n_layers: int) -> list[int]:
    """Layers restored for a cell at ``layer``: itself for hidden states, else a window of ``window``
    consecutive layers centred on it, ``[layer - window//2, layer + ceil(window/2))`` clipped, as ROME."""
    if kind.startswith("hidden") or window <= 1:
        return [layer]
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


@dataclass(frozen=True)
class TraceConfig:
    """Causal tracing settings.

    Attributes:
        kinds: which restorations to run (``hidden``, ``mlp``, ``attn``, ``hidden_sever_mlp``,
            ``hidden_sever_attn``).
        n_samples: noise samples per corrupted run (the score is the mean probability over them).
        noise: ``"auto"`` (``noise_multiplier`` x the standard deviation of subject-token embeddings
            measured over the traced fact set, as in the paper) or a fixed scale.
        noise_multiplier: the multiplier for ``"auto"`` (paper: 3).
        window: layers restored together for MLP / attention cells: a positive integer, or ``"scaled"``
            (default): ROME's 10 of GPT-2 XL's 48 layers scaled to the model's depth,
            ``round(10/48 x n_layers)`` rounded half up (:func:`scaled_window`; 4 on Gemma 3 270M). The
            resolved integer is what runs; results record it (``provenance["window"]``, ``summary()["window"]``).
        seed: seed of the Gaussian noise; the same noise is used for every cell of a fact.
        engine: ``"fast"`` (batched, partial recomputation, last-position logits), ``"reference"``
            (one full forward with all logits per cell, as ROME's code), or an estimate from gradients:
            ``"atp"`` (attribution patching) or ``"atp*"`` (AtP with the corrections in ``atp_fixes``;
            :mod:`lens_memory.trace.atp`). The exact engines give the same scores; the estimators do not.
        atp_fixes: the AtP* corrections ``"atp*"`` applies: ``"qk"`` (attention saturation) and/or
            ``"graddrop"`` (cancellation); ignored by the other engines.

    Why the window is scaled. Setup: Gemma 3 270M; 6 known facts from the built-in DEV split, one per
    relation (``spread_facts``); 10 samples; noise 3 sigma = 3.09; seed 1; fast engine. Mean clean
    p(answer) was 0.739 and mean corrupted p(answer) 0.052. The table gives the MLP AIE at the last subject
    token (mean over facts, 95% normal interval) and what :meth:`TraceResult.suggest_layers` makes of it.
    "Stable" is the share of 2,000 bootstrap resamples of the facts that pick the same layer.

    ======  ======================  ==========  ===========  ============  ===============  ======
    window  peak MLP AIE            peak layer  ROME layer   MEMIT layers  layers >= half   stable
                                                (suggested)  (suggested)   the peak
    ======  ======================  ==========  ===========  ============  ===============  ======
    10      0.355 [0.186, 0.524]    5           5            4-8           9 (0-8)          0.61
    6       0.321 [0.169, 0.473]    6           6            2-6           6 (1-6)          0.62
    4       0.305 [0.157, 0.453]    5           5            2-6           4 (2-5)          0.87
    1       0.167 [0.091, 0.243]    3           3            3-7           1 (3)            1.00
    ======  ======================  ==========  ===========  ============  ===============  ======

    Attention AIE peaks at the last token: 0.661 [0.512, 0.810] at layer 13 (window 10), 0.609
    [0.411, 0.807] at 13 (window 6), 0.562 [0.376, 0.748] at 12 (window 4), 0.351 [0.151, 0.552] at 12
    (window 1).

    The single-layer trace puts the effect in the MLP of layer 3: it is the per-fact argmax for 5 of the
    6 facts. A windowed curve has a plateau over every centre whose window contains layer 3: 0.27-0.36 over
    centres 0-8 at window 10. The suggested layer is the argmax, which falls at the top of that plateau, so
    windows 10 and 4 both suggest 5, not 3. Window 10 has two problems. Its MEMIT range, 4-8, misses
    layer 3, and its suggested layer is only 0.61 stable (0.62 at window 6). The scaled window, 4, narrows
    the plateau to layers 2-5, and its MEMIT range, 2-6, contains layer 3. It is 0.87 stable, keeps ROME's
    share of the depth (about a fifth) and keeps most of the windowed effect (0.305 against 0.355).
    ``window=1`` localises best here. It stays an option, not the default: one layer's effect is smaller
    (0.167), and the default keeps ROME's design of restoring a run of layers, at the same share of the depth.
    """

    kinds: tuple[str, ...] = KINDS
    n_samples: int = 10
    noise: float | str = "auto"
    noise_multiplier: float = 3.0
    window: int | str = "scaled"
    seed: int = 1
    engine: str = "fast"
    atp_fixes: tuple[str, ...] = ATP_FIXES

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds.split(",")) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        allowed = KINDS + SEVERED_KINDS
        bad = [k for k in kinds if k not in allowed]
        if not kinds or bad:
            raise ValueError(f"kinds {list(kinds)!r}: unknown {bad!r}; choose from {list(allowed)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds {list(kinds)!r} has duplicates")
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {self.n_samples!r}")
        if isinstance(self.noise, str):
            if self.noise != "auto":
                try:
                    object.__setattr__(self, "noise", float(self.noise))
                except ValueError:
                    raise ValueError(f"noise must be 'auto' or a number, got {self.noise!r}") from None
        if not isinstance(self.noise, str) and not (0 <= float(self.noise) < math.inf):
            raise ValueError(f"noise scale must be a finite number >= 0, got {self.noise!r}")
        if isinstance(self.noise_multiplier, bool) or not (0 < float(self.noise_multiplier) < math.inf):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}")
        object.__setattr__(self, "window", _check_window(self.window))
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        fixes = tuple(self.atp_fixes.split(",")) if isinstance(self.atp_fixes, str) else tuple(self.atp_fixes)
        if not set(fixes) <= set(ATP_FIXES) or len(set(fixes)) != len(fixes):
            raise ValueError(f"atp_fixes {list(fixes)!r}: choose distinct entries from {list(ATP_FIXES)}")
        object.__setattr__(self, "atp_fixes", fixes)
        if self.engine in ("atp", "atp*"):
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                raise ValueError(f"engine {self.engine!r} estimates the kinds {list(KINDS)}, not {bad}; trace severed "
                                 f"paths with engine='fast' or 'reference'")

    def window_for(self, n_layers: int) -> int:
        """The number of layers restored together on a model of ``n_layers`` layers."""
        return scaled_window(n_layers) if self.window == "scaled" else int(self.window)

    def resolved(self, n_layers: int) -> "TraceConfig":
        """This config with ``window`` as the integer it means on a model of ``n_layers`` layers."""
        return dataclasses.replace(self, window=self.window_for(n_layers))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kinds"] = list(self.kinds)
        if self.engine == "atp*":
            d["atp_fixes"] = list(self.atp_fixes)
        else:  # only AtP* reads it; leaving it out keeps the records (and checkpoint keys) of other engines unchanged
            del d["atp_fixes"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k in ("kinds", "atp_fixes") else v) for k, v in d.items() if k in names})


def _check_window(window: Any) -> int | str:
    """``"scaled"`` or a positive integer (an integer given as text, e.g. from the CLI, is converted)."""
    if isinstance(window, str) and window.strip().isdigit():
        window = int(window)
    if window == "scaled" or (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        return window
    raise ValueError(f"window must be a positive integer or 'scaled', got {window!r}")
