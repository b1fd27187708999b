"""Training SAEs offline with sae-lens's ``SAETrainer``, and the cache of trained SAEs.

:func:`train_sae` trains a residual-stream SAE at one layer on activations of the offline
corpus. The activations come from forward passes that stop at the layer
(:class:`~lens_memory.stack.DecoderStack`: no later block, no logits) and are collected once,
then shuffled across sequences for every epoch. Position 0 (BOS) is excluded from training and
evaluation: on Gemma its residual norm is one to two orders of magnitude above every other
token's (an attention sink), so it would dominate the loss and the activation scale while
carrying no information about the text. When an SAE is spliced in, BOS keeps its clean
activation (the SAE metadata records ``seqpos_slice = (1, None)``). Inputs are scaled to mean
norm ``sqrt(d_in)`` during training (sae-lens's ``expected_average_only_in``; the factor is
folded into the weights afterwards) and ``b_dec`` starts at the activation mean. TopK SAEs
follow Gao et al. 2024 (*Scaling and evaluating sparse autoencoders*).

Trained SAEs are cached under ``<cache>/sae``, keyed by model name and weight state
(:meth:`LensModel.state_key`), corpus hash, hook and config hash, written atomically
(safetensors + JSON, never pickle; :meth:`TrainedSAE.save`) and verified (file hashes,
provenance) before reuse; an unreadable or mismatching cache entry is retrained. Entries written
in the old layout (before the manifest) are still reused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..corpus import Corpus, resolve_corpus
from ..errors import LensMemoryError
from ..hooks import check_hook_names
from .artifact import _META_FILE, TrainedSAE
from .config import SAEConfigError, SAETrainConfig
from .features import _activations
from .quality import _ids_tensor, sae_quality

__all__ = ["train_sae"]

log = logging.getLogger(__name__)


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


def _cached(cache: Path, lm: Any, corpus: Corpus, cfg: SAETrainConfig) -> TrainedSAE | None:
    """The SAE cached at ``cache`` if it is readable and matches ``lm``, ``corpus`` and ``cfg``, else ``None``."""
    if not (cache / _META_FILE).exists():
        return None
    try:
        cached = TrainedSAE.load(cache, device=str(lm.device))
        if _cache_matches(cached, lm, corpus, cfg):
            log.info("loaded SAE %s from the cache %s", cfg.hook, cache)
            return cached
        log.warning("SAE cache %s does not match the model, corpus or config; retraining", cache)
    except Exception as exc:  # noqa: BLE001 -- corrupt cache: retrain, never trust it
        log.warning("ignoring unreadable SAE cache %s (%s); retraining", cache, exc)
    return None


def _train_eval_rows(lm: Any, corpus: Corpus, cfg: SAETrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (BOS first): the training rows, and the held-out evaluation rows after them."""
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
    return ids[:n_train_rows], ids[n_train_rows:n_train_rows + n_eval_rows]


def _sae_metadata(lm: Any, corpus: Corpus, cfg: SAETrainConfig) -> dict[str, Any]:
    """sae-lens ``SAEMetadata`` fields of an SAE trained here (BOS excluded: ``seqpos_slice`` (1, None))."""
    return {"model_name": lm.name, "hook_name": cfg.hook, "hook_head_index": None, "context_size": cfg.seq_len,
            "prepend_bos": True, "seqpos_slice": [1, None], "exclude_special_tokens": False,
            "dataset_path": f"lens_memory:{corpus.name}", "lens_memory_state_key": lm.state_key(),
            "lens_memory_corpus_sha256": corpus.sha256}


def _provenance(lm: Any, corpus: Corpus, n_forward: int, n_act: int, n_eval_rows: int, fit: dict[str, Any],
                seconds: dict[str, float], t_start: float) -> dict[str, Any]:
    """What :attr:`TrainedSAE.provenance` records (``seconds``: tokenize, collect and eval)."""
    from sae_lens import __version__ as sae_lens_version

    collect_seconds = seconds["collect"]
    return {
        "model": lm.identity.to_dict(), "state_key": lm.state_key(), "corpus": corpus.to_dict(),
        "n_forward_tokens": n_forward, "n_train_activations": n_act, "n_eval_rows": n_eval_rows,
        "bos_excluded": True, "tokenize_seconds": seconds["tokenize"], "collect_seconds": collect_seconds,
        "collect_tokens_per_s": n_forward / collect_seconds if collect_seconds > 0 else None,
        **fit,  # n_steps, scaling_factor, train_seconds, train_activations_per_s, train_dead_fraction, ...
        "tokens_per_s": n_forward / (collect_seconds + fit["train_seconds"]),  # training incl. activation collection
        "eval_seconds": seconds["eval"], "total_seconds": time.perf_counter() - t_start,
        "sae_lens_version": sae_lens_version, "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "device": str(lm.device),
    }


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
    if use_cache and (cached := _cached(cache, lm, corpus, cfg)) is not None:
        return cached
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_ids, eval_ids = _train_eval_rows(lm, corpus, cfg)  # training rows first, held-out rows after them
    seconds["tokenize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acts = _collect(lm, hook, train_ids, cfg.lm_batch_size, progress)  # passes that stop at the layer, BOS dropped
    seconds["collect"] = time.perf_counter() - t0
    n_act = acts.shape[0]
    fit = _fit(acts, cfg, str(lm.device), _sae_metadata(lm, corpus, cfg), progress)
    del acts
    inference = fit.pop("sae")
    t0 = time.perf_counter()
    quality = sae_quality(lm, inference, hook, eval_ids, n_ce_tokens=cfg.ce_tokens, batch_size=cfg.lm_batch_size,
                          progress=progress)
    seconds["eval"] = time.perf_counter() - t0
    provenance = _provenance(lm, corpus, int(train_ids.numel()), n_act, int(eval_ids.shape[0]), fit, seconds, t_start)
    out = TrainedSAE(sae=inference, hook=hook, layer=cfg.layer, config=cfg, quality=quality, provenance=provenance)
    log.info("trained SAE at %s on %d activations in %.1f s (collection %.1f s): %s", hook, n_act,
             seconds["collect"] + fit["train_seconds"], seconds["collect"], quality)
    if use_cache:
        out.save(cache)
    return out
