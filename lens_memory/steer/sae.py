"""Sparse autoencoders (SAEs) on the residual stream: load them, train them offline, measure them.

An SAE rewrites an activation ``x`` (``d_in`` numbers) as a sparse, non-negative combination of
``d_sae >> d_in`` learned directions: ``f = act(W_enc (x - b_dec) + b_enc)``, ``x̂ = W_dec f + b_dec``,
trained to reconstruct ``x`` while few features are active at a time (an L1 penalty, or only the
``k`` largest kept: TopK). The features are far more often monosemantic than neurons (Bricken et
al. 2023, *Towards Monosemanticity*; Cunningham et al. 2023, *Sparse Autoencoders Find Highly
Interpretable Features in Language Models*), which is what steering needs to decompose a vector
into readable parts. TopK SAEs follow Gao et al. 2024 (*Scaling and evaluating sparse
autoencoders*); Gemma Scope (Lieberum et al. 2024) and Gemma Scope 2 publish JumpReLU SAEs for
every layer of the Gemma models.

Everything here is a sae-lens ``SAE`` object (``sae.encode``, ``sae.decode``, ``sae.cfg``):

* **online** -- :func:`load_pretrained_sae` wraps ``SAE.from_pretrained``; for the embedded
  Gemma 3 270M the release is ``gemma-scope-2-270m-pt-res`` (residual stream after layers 5, 9,
  12 and 15; widths 16k to 1M). Those SAEs were trained on the bf16 model, not on the embedded
  Q4_K_M-dequantized weights: measure them with :func:`sae_quality` before trusting them.
* **offline** -- :func:`train_sae` trains a residual-stream SAE at one layer with sae-lens's own
  ``SAETrainer`` on activations of the offline corpus. The activations come from forward passes
  that stop at the layer (:class:`~lens_memory.stack.DecoderStack`: no later block, no logits)
  and are collected once, then shuffled across sequences for every epoch. Position 0 (BOS) is
  excluded from training and evaluation: on Gemma its residual norm is one to two orders of
  magnitude above every other token's (an attention sink), so it would dominate the loss and the
  activation scale while carrying no information about the text. When an SAE is spliced in,
  BOS keeps its clean activation (the SAE metadata records ``seqpos_slice = (1, None)``).
  Inputs are scaled to mean norm ``sqrt(d_in)`` during training (sae-lens's
  ``expected_average_only_in``; the factor is folded into the weights afterwards) and ``b_dec``
  starts at the activation mean.
  Trained SAEs are cached under ``<cache>/sae``, keyed by model name and weight state
  (:meth:`LensModel.state_key`), corpus hash, hook and config hash, written atomically
  (safetensors + JSON, never pickle) and verified (file hashes, provenance) before reuse; an
  unreadable or mismatching cache entry is retrained.

Quality (:class:`SAEQuality`, :func:`sae_quality`), on held-out tokens, BOS excluded:

* ``explained_variance`` ``= 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` (sae-lens's definition);
* ``l0``: mean number of active features per token; ``dead_fraction``: features that never fire
  on the evaluation tokens (an upper bound on truly dead features for few tokens);
* ``loss_recovered`` ``= (ce_zero - ce_spliced) / (ce_zero - ce_clean)``: next-token cross
  entropy with the reconstruction spliced in at the hook (every position but BOS), against the
  clean model and against the activation zero-ablated there. The shared prefix (blocks before
  the hook) runs once; only the later blocks and the 262k-vocabulary unembedding run per
  condition, on a few thousand tokens (``n_ce_tokens``) because the unembedding dominates.

:func:`check_sae` refuses an SAE whose input width, hook or model does not match, naming the value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from ..corpus import Corpus, resolve_corpus, token_blocks
from ..errors import ArtifactMismatchError, LensMemoryError, ModelUnavailableError
from ..hooks import capture, check_hook_names
from ..io import read_json, sha256_file, write_json

if TYPE_CHECKING:  # sae_lens is imported when first used (it pulls in wandb and datasets)
    from sae_lens import SAE

__all__ = ["SAETrainConfig", "SAEQuality", "TrainedSAE", "SAEConfigError", "SAEMismatchError", "train_sae",
           "sae_quality", "check_sae", "feature_acts", "load_pretrained_sae", "pretrained_sae_ids",
           "resid_post_hook", "GEMMA_SCOPE_RELEASE"]

log = logging.getLogger(__name__)

#: sae-lens release of the Gemma Scope 2 residual-stream SAEs of Gemma 3 270M (pretrained)
GEMMA_SCOPE_RELEASE = "gemma-scope-2-270m-pt-res"

_META_FILE = "trained_sae.json"
_ARCHITECTURES = ("topk", "standard")
_D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out",
                  "hook_in", "hook_out")
_HOOK_LAYER = re.compile(r"^blocks\.(\d+)\.")


class SAEConfigError(LensMemoryError, ValueError):
    """An SAE training config has a bad value (the message names it)."""


class SAEMismatchError(ArtifactMismatchError, ValueError):
    """An SAE does not fit the model or hook it is used with (width, hook or model)."""


def resid_post_hook(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def _hook_layer(hook: str) -> int:
    m = _HOOK_LAYER.match(hook)
    if m is None:
        raise SAEConfigError(f"hook {hook!r} is not inside a block (expected 'blocks.L.…', e.g. 'blocks.6.hook_resid_post')")
    return int(m.group(1))


# ---------------------------------------------------------------------------------------
# config and results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAETrainConfig:
    """How an SAE is trained by :func:`train_sae` (validated on construction).

    Defaults are for Gemma 3 270M (``d_model`` 640) at layer 6 on 2 CPU cores; the tiny test
    model needs far smaller values. Measured once (layer 6, offline corpus, CPU shared with other
    jobs): 297,688 training activations, 290 steps; held-out (8,192 tokens) explained variance
    0.94, L0 32, 49% of features silent on those tokens (36% dead in the last 50 training steps):
    the dead fraction is the weak point of so short a run. Loss recovered was not measured yet.

    Attributes:
        layer: block whose output the SAE reads (checked against the model at training time).
        hook: TransformerLens hook name inside block ``layer``; default ``blocks.{layer}.hook_resid_post``.
        d_sae: number of features.
        architecture: ``"topk"`` (keep the ``k`` largest pre-activations; Gao et al. 2024) or
            ``"standard"`` (ReLU with an L1 penalty weighted by ``l1_coefficient``).
        k: active features per token for ``"topk"``.
        l1_coefficient: sparsity penalty of ``"standard"`` (on inputs scaled to norm ``sqrt(d_in)``).
        corpus: corpus spec (:func:`~lens_memory.corpus.resolve_corpus`), when none is passed.
        n_tokens: token positions forwarded for training (BOS included; BOS activations dropped).
        seq_len: tokens per row (BOS + ``seq_len - 1`` corpus tokens).
        batch_size: activations per optimiser step.
        lm_batch_size: rows per forward pass of the model.
        epochs: passes over the collected activations (reshuffled each time).
        lr, lr_warm_up_frac, lr_decay_frac: Adam learning rate, with linear warm-up over the first
            and linear decay to 0 over the last fraction of the steps.
        dead_feature_window: steps without firing after which a feature counts as dead during
            training (TopK's auxiliary loss then trains it on the residual error).
        aux_loss_coefficient: weight of that auxiliary loss.
        normalize: scale inputs to mean norm ``sqrt(d_in)`` while training (folded in afterwards).
        b_dec_init: ``"mean"`` (activation mean) or ``"zeros"``.
        eval_tokens: held-out token positions (after the training rows) for the quality metrics.
        ce_tokens: of those, how many next-token predictions score the loss recovered (0: skip).
        seed: initialisation and shuffling seed.
    """

    layer: int
    hook: str | None = None
    d_sae: int = 4096
    architecture: str = "topk"
    k: int = 32
    l1_coefficient: float = 5.0
    corpus: str = "offline"
    n_tokens: int = 300_000
    seq_len: int = 128
    batch_size: int = 1024
    lm_batch_size: int = 16
    epochs: int = 1
    lr: float = 1e-3
    lr_warm_up_frac: float = 0.05
    lr_decay_frac: float = 0.2
    dead_feature_window: int = 50
    aux_loss_coefficient: float = 1.0 / 32
    normalize: bool = True
    b_dec_init: str = "mean"
    eval_tokens: int = 8192
    ce_tokens: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> SAEConfigError:
            return SAEConfigError(f"SAETrainConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.layer) or self.layer < 0:
            raise bad("layer", "a non-negative integer")
        if self.hook is None:
            object.__setattr__(self, "hook", resid_post_hook(self.layer))
        if not isinstance(self.hook, str) or not self.hook.startswith(f"blocks.{self.layer}."):
            raise bad("hook", f"a hook name inside block {self.layer} (e.g. {resid_post_hook(self.layer)!r})")
        for name, lo in (("d_sae", 1), ("k", 1), ("n_tokens", 1), ("seq_len", 3), ("batch_size", 1),
                         ("lm_batch_size", 1), ("epochs", 1), ("dead_feature_window", 1), ("eval_tokens", 1),
                         ("ce_tokens", 0)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                raise bad(name, f"an integer >= {lo}")
        if not is_int(self.seed):
            raise bad("seed", "an integer")
        if self.architecture not in _ARCHITECTURES:
            raise bad("architecture", f"one of {', '.join(map(repr, _ARCHITECTURES))}")
        if self.architecture == "topk" and self.k > self.d_sae:
            raise bad("k", f"at most d_sae ({self.d_sae})")
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("lr", "l1_coefficient"):
            if not number(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive finite number")
        for name in ("lr_warm_up_frac", "lr_decay_frac"):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise bad(name, "a number in [0, 1)")
        if not number(self.aux_loss_coefficient) or self.aux_loss_coefficient < 0:
            raise bad("aux_loss_coefficient", "a non-negative finite number")
        if self.lr_warm_up_frac + self.lr_decay_frac >= 1:
            raise SAEConfigError(f"SAETrainConfig.lr_warm_up_frac + lr_decay_frac must be < 1, got "
                                 f"{self.lr_warm_up_frac!r} + {self.lr_decay_frac!r}")
        if not isinstance(self.normalize, bool):
            raise bad("normalize", "True or False")
        if self.b_dec_init not in ("mean", "zeros"):
            raise bad("b_dec_init", "'mean' or 'zeros'")
        if not isinstance(self.corpus, str) or not self.corpus:
            raise bad("corpus", "a non-empty corpus spec string")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAETrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SAEConfigError(f"unknown SAETrainConfig field(s) {unknown}")
        return cls(**d)

    def key(self) -> str:
        """SHA-256 of the config (a cache key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


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


@dataclass
class TrainedSAE:
    """A sae-lens inference ``SAE`` trained by :func:`train_sae`, with its config, quality and provenance.

    ``provenance`` records the model identity and weight state, the corpus, token counts, the
    seconds and tokens/s of activation collection (a plain forward to the layer) and of training,
    a subsampled loss curve and sae-lens's own end-of-training sparsity statistics.
    """

    sae: "SAE"
    hook: str
    layer: int
    config: SAETrainConfig
    quality: SAEQuality
    provenance: dict[str, Any] = field(default_factory=dict)

    def encode(self, x: Float[torch.Tensor, "... d_in"]) -> Float[torch.Tensor, "... d_sae"]:
        with torch.no_grad():
            return self.sae.encode(x.to(self.sae.device, self.sae.dtype))

    def decode(self, f: Float[torch.Tensor, "... d_sae"]) -> Float[torch.Tensor, "... d_in"]:
        with torch.no_grad():
            return self.sae.decode(f.to(self.sae.device, self.sae.dtype))

    def feature_acts(self, lm: Any, ids: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_sae"]:
        """Feature activations on a token batch (see :func:`feature_acts`)."""
        return feature_acts(lm, self.sae, ids, self.hook)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: quality, sizes and timings."""
        p = self.provenance
        keys = ("n_train_activations", "collect_seconds", "collect_tokens_per_s", "train_seconds",
                "train_activations_per_s", "tokens_per_s", "total_seconds")
        return {"hook": self.hook, "d_sae": self.config.d_sae, "architecture": self.config.architecture,
                **self.quality.to_dict(), **{k: p.get(k) for k in keys}}

    def _meta(self) -> dict[str, Any]:
        return {"kind": "lens_memory.TrainedSAE", "hook": self.hook, "layer": self.layer,
                "config": self.config.to_dict(), "quality": self.quality.to_dict(), "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        """Write the directory ``path``: sae-lens's ``sae_weights.safetensors`` + ``cfg.json``, and
        ``trained_sae.json`` (config, quality, provenance, file hashes). Atomic: a complete new
        directory replaces the old one. Refuses to replace a non-empty directory that is not a saved SAE.
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / _META_FILE).exists())):
            raise LensMemoryError(f"refusing to overwrite {str(path)!r}: it exists and is not a saved TrainedSAE")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            weights, cfg = self.sae.save_model(tmp)
            meta = self._meta()
            meta["files"] = {weights.name: sha256_file(weights), cfg.name: sha256_file(cfg)}
            write_json(tmp / _META_FILE, meta)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, lm: Any = None, *, device: str | None = None) -> "TrainedSAE":
        """Load a saved SAE; file hashes are verified. With ``lm``, :func:`check_sae` is applied."""
        from sae_lens import SAE

        path = Path(path)
        meta_file = path / _META_FILE
        if not meta_file.exists():
            raise ArtifactMismatchError(f"{str(path)!r} is not a saved TrainedSAE (no {_META_FILE})")
        meta = read_json(meta_file)
        for name, digest in meta.get("files", {}).items():
            f = path / name
            if not f.exists() or sha256_file(f) != digest:
                raise ArtifactMismatchError(f"{f} is missing or corrupt (SHA-256 differs from {_META_FILE})")
        sae = SAE.load_from_disk(path, device=device or (str(lm.device) if lm is not None else "cpu"))
        out = cls(sae=sae, hook=meta["hook"], layer=int(meta["layer"]), config=SAETrainConfig.from_dict(meta["config"]),
                  quality=SAEQuality.from_dict(meta["quality"]), provenance=meta.get("provenance", {}))
        if lm is not None:
            check_sae(lm, sae, out.hook)
        return out

    def __repr__(self) -> str:
        return (f"TrainedSAE({self.hook!r}, {self.config.architecture}, d_sae={self.config.d_sae}, "
                f"{self.quality})")


# ---------------------------------------------------------------------------------------
# checks, activations, features
# ---------------------------------------------------------------------------------------


def _norm_model_name(name: str) -> str:
    return name.strip().split("/")[-1].lower()


def _act_width(act: torch.Tensor, sae: Any = None) -> int:
    if act.ndim >= 4 and sae is not None and getattr(sae.cfg, "reshape_activations", "none") == "hook_z":
        return int(act.shape[-2] * act.shape[-1])
    return int(act.shape[-1])


def _hook_width(lm: Any, hook: str, sae: Any = None) -> int:
    if hook.rsplit(".", 1)[-1] in _D_MODEL_HOOKS and hook.count(".") == 2:
        return lm.d_model
    bos = lm.tokenizer.bos_token_id
    ids = torch.tensor([[bos if bos is not None else 0, 0]], dtype=torch.long)
    return _act_width(capture(lm, ids, [hook], early_stop=True)[hook], sae)


def check_sae(lm: Any, sae: "SAE", hook: str | None = None) -> str:
    """Refuse an SAE that does not fit ``lm`` at ``hook``; return the hook name.

    Checked: the hook exists on the model; the SAE's recorded hook (``sae.cfg.metadata.hook_name``)
    is ``hook``; its recorded model (``metadata.model_name``, organisation prefix and case
    ignored, so ``google/gemma-3-270m`` fits ``gemma-3-270m``) is ``lm``'s; its input width
    ``sae.cfg.d_in`` is the activation width at the hook. Unrecorded metadata is not checked. An
    SAE trained on other weights of the same model (e.g. before an edit) is accepted with a warning.

    Raises:
        SAEMismatchError: naming the offending value and the expected one.
    """
    meta = sae.cfg.metadata
    recorded = meta.hook_name if meta is not None else None
    hook = hook or recorded
    if not hook:
        raise SAEMismatchError("the SAE records no hook name (cfg.metadata.hook_name); pass hook=... explicitly")
    try:
        check_hook_names(lm, [hook])
    except KeyError as exc:
        raise SAEMismatchError(exc.args[0]) from None
    if recorded and recorded != hook:
        raise SAEMismatchError(f"SAE was trained at hook {recorded!r}, not at {hook!r}")
    model = meta.model_name if meta is not None else None
    if model and _norm_model_name(str(model)) != _norm_model_name(lm.name):
        raise SAEMismatchError(f"SAE was trained on model {model!r}, not on {lm.name!r}")
    width = _hook_width(lm, hook, sae)
    if int(sae.cfg.d_in) != width:
        raise SAEMismatchError(f"SAE input width d_in={sae.cfg.d_in} does not match the width {width} of "
                               f"{hook!r} on {lm.name}")
    state = meta.get("lens_memory_state_key") if meta is not None else None
    if state and state != lm.state_key():
        log.warning("SAE at %s was trained on other weights of %s (state %s…, now %s…)", hook, lm.name,
                    str(state)[:12], lm.state_key()[:12])
    return hook


def _stack_or_none(lm: Any) -> Any:
    from ..stack import UnsupportedArchitectureError

    try:
        return lm.stack
    except UnsupportedArchitectureError:
        return None


@torch.no_grad()
def _activations(lm: Any, hook: str, ids: torch.Tensor) -> torch.Tensor:
    """Activations at ``hook`` for ``ids`` ``[batch pos]``, from a pass that stops at the hook's block."""
    ids = ids.to(lm.device)
    stack = _stack_or_none(lm)
    layer = _hook_layer(hook)
    if stack is not None and hook == resid_post_hook(layer):
        return stack.run(stack.embed(ids), 0, layer + 1)
    return capture(lm, ids, [hook], early_stop=True)[hook]


@torch.no_grad()
def feature_acts(lm: Any, sae: "SAE", ids: Int[torch.Tensor, "batch pos"],
                 hook: str | None = None) -> Float[torch.Tensor, "batch pos d_sae"]:
    """SAE feature activations at every position of ``ids`` (forward pass stops at the hook's block).

    Position 0 is BOS when ids come from :meth:`LensModel.encode` or :func:`token_blocks`; SAEs
    trained here never saw it, so its features are not meaningful.
    """
    hook = check_sae(lm, sae, hook)
    if ids.ndim == 1:
        ids = ids[None]
    return sae.encode(_activations(lm, hook, ids).to(sae.device, sae.dtype))


# ---------------------------------------------------------------------------------------
# pretrained (online)
# ---------------------------------------------------------------------------------------


def pretrained_sae_ids(release: str = GEMMA_SCOPE_RELEASE) -> list[str]:
    """The SAE ids of a sae-lens release (from sae-lens's bundled directory; no network)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        raise LensMemoryError(f"unknown sae-lens release {release!r}" + (f" (did you mean {close}?)" if close else ""))
    return list(directory[release].saes_map)


def load_pretrained_sae(release: str = GEMMA_SCOPE_RELEASE, sae_id: str = "layer_9_width_16k_l0_medium",
                        lm: Any = None, *, device: str | None = None) -> "SAE":
    """``SAE.from_pretrained(release, sae_id)`` (needs the network), checked against ``lm`` if given.

    For the embedded model: ``release="gemma-scope-2-270m-pt-res"``, ids like
    ``layer_{5,9,12,15}_width_{16k,65k,262k,1m}_l0_{small,medium,big}`` (:func:`pretrained_sae_ids`).

    Raises:
        LensMemoryError: unknown release or id (checked offline, before any download).
        ModelUnavailableError: the weights cannot be downloaded (offline, no access ...).
        SAEMismatchError: the SAE does not fit ``lm`` (:func:`check_sae`).
    """
    from sae_lens import SAE

    ids = pretrained_sae_ids(release)
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=3) or ids[:3]
        raise LensMemoryError(f"unknown SAE id {sae_id!r} in release {release!r} (e.g. {close})")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device or (str(lm.device) if lm is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 -- HF hub / connection / file errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailableError(
            f"cannot download SAE {sae_id!r} of release {release!r} ({type(exc).__name__}: {first[:200]}); "
            "it needs the network -- offline, train one with lens_memory.steer.sae.train_sae"
        ) from None
    if lm is not None:
        check_sae(lm, sae, sae.cfg.metadata.hook_name)
    return sae


# ---------------------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------------------


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
    if ids is None:
        ids = _ids_tensor(lm, resolve_corpus(lm, corpus), n_tokens, seq_len)
    if ids.ndim != 2 or ids.shape[1] < 3 or ids.dtype != torch.long:
        raise LensMemoryError(f"sae_quality needs token ids [batch pos] (long, pos >= 3), got "
                              f"{tuple(ids.shape)} {ids.dtype}")
    if not isinstance(n_ce_tokens, int) or n_ce_tokens < 0:
        raise LensMemoryError(f"n_ce_tokens must be a non-negative integer, got {n_ce_tokens!r}")
    per_row = ids.shape[1] - 2
    ce_rows = min(ids.shape[0], -(-n_ce_tokens // per_row)) if n_ce_tokens else 0
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.bool, device=sae.device)
    sse = sq = 0.0
    s = None
    n = 0
    nnz = 0
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_ce = 0
    conds = {"clean": None, "spliced": lambda x: _sae_apply(sae, x), "zero": torch.zeros_like}
    bar = tqdm(total=ids.shape[0], desc=f"SAE quality {hook}", unit="row", leave=False, disable=not progress)
    for i in range(0, ids.shape[0], batch_size):
        rows = ids[i:i + batch_size]
        n_ce_rows = max(0, min(rows.shape[0], ce_rows - i))
        if n_ce_rows:
            sums, act = _ce_conditions(lm, hook, rows[:n_ce_rows], conds)
            for k in ce:
                ce[k] += sums[k]
            n_ce += n_ce_rows * per_row
            if n_ce_rows < rows.shape[0]:
                act = torch.cat([act, _activations(lm, hook, rows[n_ce_rows:])])
        else:
            act = _activations(lm, hook, rows)
        x = act[:, 1:].to(sae.device, sae.dtype)
        f = sae.encode(x)
        xh = sae.decode(f)
        x2 = x.reshape(-1, int(sae.cfg.d_in)).double()
        f2 = f.reshape(-1, d_sae)
        sse += float((xh.reshape(x2.shape).double() - x2).pow(2).sum())
        sq += float(x2.pow(2).sum())
        s = x2.sum(0) if s is None else s + x2.sum(0)
        n += x2.shape[0]
        active = f2 != 0
        nnz += int(active.sum())
        fired |= active.any(0)
        bar.update(rows.shape[0])
    bar.close()
    var = sq - float(s.pow(2).sum()) / n
    if n_ce:
        c_clean, c_spl, c_zero = (ce[k] / n_ce for k in ("clean", "spliced", "zero"))
        denom = c_zero - c_clean
        recovered = (c_zero - c_spl) / denom if denom != 0 else float("nan")
    else:
        c_clean = c_spl = c_zero = recovered = float("nan")
    n_dead = int((~fired).sum())
    return SAEQuality(explained_variance=1.0 - sse / var if var > 0 else float("nan"), mse=sse / n, l0=nnz / n,
                      dead_fraction=n_dead / d_sae, n_dead=n_dead, d_sae=d_sae, ce_clean=c_clean, ce_spliced=c_spl,
                      ce_zero=c_zero, loss_recovered=recovered, n_eval_tokens=n, n_ce_tokens=n_ce, hook=hook)


# ---------------------------------------------------------------------------------------
# training (offline)
# ---------------------------------------------------------------------------------------


def _training_sae(cfg: SAETrainConfig, d_in: int, device: str, metadata: dict[str, Any] | None = None) -> Any:
    """A freshly initialised sae-lens training SAE for ``cfg`` (seeded; the global RNG is left alone)."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    common = dict(d_in=d_in, d_sae=cfg.d_sae, dtype="float32", device=device, apply_b_dec_to_input=True,
                  normalize_activations="none", metadata=SAEMetadata(**(metadata or {})))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.architecture == "topk":
            return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
                                                         rescale_acts_by_decoder_norm=True, **common))
        return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common))


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled minibatches of the rows of ``acts`` (a new permutation per epoch, partial batches dropped)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(acts.shape[0], generator=gen)
        for i in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[perm[i:i + batch_size]]


def _make_trainer(trainer_cfg: Any, sae: Any, provider: Iterator[torch.Tensor], history: list, every: int) -> Any:
    from sae_lens import SAETrainer

    class _Trainer(SAETrainer):  # records a subsampled loss curve through the public step() seam
        def step(self, batch: torch.Tensor) -> Any:
            out = super().step(batch)
            if self.n_training_steps % every == 0 or self.n_training_samples >= self.cfg.total_training_samples:
                history.append({"step": self.n_training_steps,
                                **{k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.losses.items()}})
            return out

    return _Trainer(cfg=trainer_cfg, sae=sae, data_provider=provider)


@contextlib.contextmanager
def _trainer_bar(progress: bool) -> Iterator[None]:
    """Silence the progress bar of sae-lens's ``SAETrainer.fit`` when ``progress`` is off."""
    import sae_lens.training.sae_trainer as st

    if progress:
        yield
        return
    orig = st.tqdm
    st.tqdm = functools.partial(orig, disable=True)
    try:
        yield
    finally:
        st.tqdm = orig


def _fit(acts: Float[torch.Tensor, "n d_in"], cfg: SAETrainConfig, device: str, metadata: dict[str, Any],
         progress: bool = False) -> dict[str, Any]:
    """Train on the activations ``acts`` with sae-lens's ``SAETrainer``; return the inference SAE
    (key ``"sae"``; input scaling and, for TopK, decoder norms folded in) and training statistics."""
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    n_act, d_in = acts.shape
    steps_per_epoch = n_act // cfg.batch_size
    if steps_per_epoch < 1:
        raise SAEConfigError(f"SAETrainConfig.batch_size {cfg.batch_size} is larger than the {n_act} training "
                             f"activations (n_tokens={cfg.n_tokens})")
    n_steps = steps_per_epoch * cfg.epochs
    sae = _training_sae(cfg, d_in, device, metadata)
    scale = float(math.sqrt(d_in) / acts.norm(dim=-1).mean()) if cfg.normalize else None
    if cfg.b_dec_init == "mean":
        with torch.no_grad():
            sae.b_dec.copy_((acts.mean(0) * (scale or 1.0)).to(sae.b_dec))
    warm = int(cfg.lr_warm_up_frac * n_steps)
    warm = warm if warm >= 2 else 0
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr, lr_scheduler_name="constant", lr_warm_up_steps=warm,
        lr_decay_steps=int(cfg.lr_decay_frac * n_steps), device=device, dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=n_steps + 1, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False))
    history: list[dict[str, float]] = []
    trainer = _make_trainer(trainer_cfg, sae, _batches(acts, cfg.batch_size, cfg.seed), history,
                            every=max(1, n_steps // 50))
    trainer.activation_scaler.scaling_factor = scale  # fit() then skips its own estimate and folds this one in
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _trainer_bar(progress):
        torch.manual_seed(cfg.seed)
        sae = trainer.fit()
    train_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="lens_memory_sae_") as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp, device=device)
    l0 = sae.cfg.metadata.l0
    return {"sae": inference, "n_steps": n_steps, "scaling_factor": scale, "train_seconds": train_seconds,
            "train_activations_per_s": n_steps * cfg.batch_size / train_seconds if train_seconds > 0 else None,
            "train_dead_fraction": float(trainer.dead_neurons.float().mean()),
            "train_l0": float(l0) if l0 is not None else None, "loss_history": history}


def _cache_dir(lm: Any, corpus: Corpus, cfg: SAETrainConfig, cache_dir: str | Path | None) -> Path:
    from ..embedded import cache_root

    return (cache_root(cache_dir) / "sae" / lm.name.replace("/", "--") / lm.state_key()[:16] / corpus.sha256[:16]
            / f"{cfg.hook}_{cfg.key()[:16]}")


def _cache_matches(t: TrainedSAE, lm: Any, corpus: Corpus, cfg: SAETrainConfig) -> bool:
    p = t.provenance
    return (t.config == cfg and t.hook == cfg.hook and p.get("state_key") == lm.state_key()
            and p.get("model", {}).get("name") == lm.name and p.get("corpus", {}).get("sha256") == corpus.sha256)


@torch.no_grad()
def _collect(lm: Any, hook: str, ids: torch.Tensor, lm_batch_size: int, progress: bool) -> torch.Tensor:
    """Activations at ``hook`` of every row of ``ids`` except position 0 (BOS), as ``[n d_in]``."""
    out: torch.Tensor | None = None
    n = 0
    per_row = ids.shape[1] - 1
    bar = tqdm(total=ids.numel(), desc=f"SAE activations {hook}", unit="tok", leave=False, disable=not progress)
    for i in range(0, ids.shape[0], lm_batch_size):
        rows = ids[i:i + lm_batch_size]
        a = _activations(lm, hook, rows)[:, 1:]
        a = a.reshape(-1, a.shape[-2] * a.shape[-1] if a.ndim == 4 else a.shape[-1]).float()
        if out is None:
            out = torch.empty(ids.shape[0] * per_row, a.shape[-1], dtype=torch.float32)
        out[n:n + a.shape[0]] = a.cpu()
        n += a.shape[0]
        bar.update(rows.numel())
    bar.close()
    assert out is not None
    return out[:n]


def train_sae(lm: Any, cfg: SAETrainConfig, *, corpus: Corpus | None = None, use_cache: bool = True,
              cache_dir: str | Path | None = None, progress: bool = True) -> TrainedSAE:
    """Train (or load from the cache) an SAE at ``cfg.hook`` with sae-lens's ``SAETrainer``.

    Steps: tokenize ``cfg.n_tokens + cfg.eval_tokens`` positions of the corpus into rows
    (BOS first); collect the training rows' activations with passes that stop at the layer,
    BOS dropped; train for ``cfg.epochs`` shuffled passes; convert to sae-lens's inference SAE
    (norm scaling and decoder norms folded in); measure :func:`sae_quality` on the held-out rows.

    Args:
        corpus: an already-loaded corpus (else ``cfg.corpus`` is resolved).
        use_cache: reuse a matching cached SAE and cache the new one.
        cache_dir: cache root (default ``$LENS_MEMORY_CACHE`` or ``~/.cache/lens_memory``).
    """
    from sae_lens import __version__ as sae_lens_version

    if not isinstance(cfg, SAETrainConfig):
        raise SAEConfigError(f"train_sae needs an SAETrainConfig, got {type(cfg).__name__}")
    lm.check_layer(cfg.layer)
    hook = str(cfg.hook)
    try:
        check_hook_names(lm, [hook])
    except KeyError as exc:
        raise SAEConfigError(exc.args[0]) from None
    t_start = time.perf_counter()
    corpus = corpus or resolve_corpus(lm, cfg.corpus)
    cache = _cache_dir(lm, corpus, cfg, cache_dir)
    if use_cache and (cache / _META_FILE).exists():
        try:
            cached = TrainedSAE.load(cache, device=str(lm.device))
            if _cache_matches(cached, lm, corpus, cfg):
                log.info("loaded SAE %s from the cache %s", hook, cache)
                return cached
            log.warning("SAE cache %s does not match the model, corpus or config; retraining", cache)
        except Exception as exc:  # noqa: BLE001 -- corrupt cache: retrain, never trust it
            log.warning("ignoring unreadable SAE cache %s (%s); retraining", cache, exc)

    # tokens: training rows first, held-out evaluation rows after them
    t0 = time.perf_counter()
    n_train_rows = -(-cfg.n_tokens // cfg.seq_len)
    n_eval_rows = -(-cfg.eval_tokens // cfg.seq_len)
    ids = _ids_tensor(lm, corpus, (n_train_rows + n_eval_rows) * cfg.seq_len, cfg.seq_len)
    if ids.shape[0] < n_train_rows + n_eval_rows:
        n_train_rows = ids.shape[0] - n_eval_rows
        if n_train_rows < 1:
            raise LensMemoryError(f"corpus {corpus.name!r} has only {ids.shape[0]} rows of {cfg.seq_len} tokens: "
                                  f"too few for {n_eval_rows} evaluation rows plus training rows")
        log.warning("corpus %r is short: training on %d rows (%d tokens) instead of %d tokens", corpus.name,
                    n_train_rows, n_train_rows * cfg.seq_len, cfg.n_tokens)
    train_ids, eval_ids = ids[:n_train_rows], ids[n_train_rows:n_train_rows + n_eval_rows]
    tokenize_seconds = time.perf_counter() - t0

    # activations: forward passes that stop at the layer, BOS dropped
    t0 = time.perf_counter()
    acts = _collect(lm, hook, train_ids, cfg.lm_batch_size, progress)
    collect_seconds = time.perf_counter() - t0
    n_act = acts.shape[0]
    device = str(lm.device)
    metadata = {"model_name": lm.name, "hook_name": hook, "hook_head_index": None, "context_size": cfg.seq_len,
                "prepend_bos": True, "seqpos_slice": [1, None], "exclude_special_tokens": False,
                "dataset_path": f"lens_memory:{corpus.name}", "lens_memory_state_key": lm.state_key(),
                "lens_memory_corpus_sha256": corpus.sha256}
    fit = _fit(acts, cfg, device, metadata, progress)
    del acts
    inference = fit.pop("sae")

    # held-out quality
    t0 = time.perf_counter()
    quality = sae_quality(lm, inference, hook, eval_ids, n_ce_tokens=cfg.ce_tokens, batch_size=cfg.lm_batch_size,
                          progress=progress)
    eval_seconds = time.perf_counter() - t0
    n_forward = int(train_ids.numel())
    provenance = {
        "model": lm.identity.to_dict(), "state_key": lm.state_key(), "corpus": corpus.to_dict(),
        "n_forward_tokens": n_forward, "n_train_activations": n_act, "n_eval_rows": int(eval_ids.shape[0]),
        "bos_excluded": True, "tokenize_seconds": tokenize_seconds, "collect_seconds": collect_seconds,
        "collect_tokens_per_s": n_forward / collect_seconds if collect_seconds > 0 else None,
        **fit,  # n_steps, scaling_factor, train_seconds, train_activations_per_s, train_dead_fraction, ...
        "tokens_per_s": n_forward / (collect_seconds + fit["train_seconds"]),  # training incl. activation collection
        "eval_seconds": eval_seconds, "total_seconds": time.perf_counter() - t_start,
        "sae_lens_version": sae_lens_version, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "device": device,
    }
    out = TrainedSAE(sae=inference, hook=hook, layer=cfg.layer, config=cfg, quality=quality, provenance=provenance)
    log.info("trained SAE at %s on %d activations in %.1f s (collection %.1f s): %s", hook, n_act,
             collect_seconds + fit["train_seconds"], collect_seconds, quality)
    if use_cache:
        out.save(cache)
    return out
