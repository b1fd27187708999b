"""Key statistics: the second moment ``C = E[k kᵀ]`` of an MLP layer's keys.

ROME and MEMIT change ``W_out`` as little as possible *for the keys the layer usually sees*:
the update is shaped by ``C⁻¹`` so that keys orthogonal to ``C⁻¹ k*`` keep their values
(Meng et al. 2022, eq. 2). ``C`` is estimated from a text corpus: ROME used 100,000 Wikipedia
samples (tens of millions of tokens) on GPT-2 XL; the defaults here use far fewer tokens
(``StatsConfig.n_tokens``, 100k) because a 2-core CPU computes keys at a few thousand tokens per
second; the token count is recorded with every statistic and every edit.

Only the layers up to the highest requested one are run: a hook on the last key raises and
stops the forward pass, so no later layer, final norm or 262k-vocabulary unembedding is computed.
All requested layers are estimated in the same pass. Position 0 (BOS, an attention sink with
atypical activations) is excluded, as ROME's data had no BOS.

Results are cached on disk under ``<cache>/stats``, keyed by model and weight state (edits
included), corpus hash, layer, token count and block length, written atomically, and checked
against their JSON metadata before reuse -- a statistic from another model or corpus is never used.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..corpus import Corpus, resolve_corpus, token_blocks
from ..errors import LensMemoryError
from .weights import key_hook

__all__ = ["StatsConfig", "KeyStats", "key_statistics", "check_stats", "shard_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatsConfig:
    """How ``C`` is estimated.

    ``corpus``: ``"offline"`` (documentation prose), ``"samples[:N]"`` (text sampled from the model,
    cached), a text file or directory, or ``"hf:NAME[:CONFIG[:SPLIT]]"`` (online).
    """

    corpus: str = "offline"
    n_tokens: int = 100_000
    seq_len: int = 128
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("n_tokens", "seq_len", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (2 if name == "seq_len" else 1):
                raise LensMemoryError(f"StatsConfig.{name} must be a positive integer, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class KeyStats:
    """Second moment of one layer's MLP keys, with provenance."""

    layer: int
    mom2: Float[torch.Tensor, "d_mlp d_mlp"]  # E[k kᵀ] over n_tokens keys (float64)
    mean: Float[torch.Tensor, "d_mlp"]
    n_tokens: int
    hook: str
    model: str
    state_key: str
    corpus: dict[str, Any]
    config: dict[str, Any]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def condition_number(self) -> float:
        ev = torch.linalg.eigvalsh(self.mom2)
        return float(ev[-1] / ev[0].clamp_min(1e-300)) if ev[0] > 0 else float("inf")

    def _meta(self) -> dict[str, Any]:
        return {"layer": self.layer, "n_tokens": self.n_tokens, "hook": self.hook, "model": self.model,
                "state_key": self.state_key, "corpus": self.corpus, "config": self.config, "seconds": self.seconds,
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write ``key_stats.json`` + ``key_stats.safetensors`` into directory ``path`` atomically."""
        from ..artifacts import save_artifact

        return save_artifact(path, "key_stats", self._meta(), {"mom2": self.mom2, "mean": self.mean})

    @classmethod
    def load(cls, path: str | Path) -> "KeyStats":
        from ..artifacts import load_artifact, require

        meta, t = load_artifact(path, "key_stats")
        require(meta, ("layer", "n_tokens", "hook", "model", "state_key", "corpus", "config"), path)
        fields_ = {k: meta[k] for k in ("layer", "n_tokens", "hook", "model", "state_key", "corpus", "config",
                                        "seconds", "meta") if k in meta}
        return cls(mom2=t["mom2"], mean=t["mean"], **fields_)


def check_stats(st: KeyStats, lm: Any, layer: int) -> None:
    """Refuse key statistics of another layer, hook or model state (compared by weight hash, not name).

    The keys entering layer ``layer``'s MLP output projection depend on every weight below it, so the
    statistics must have been computed on weights with the same :meth:`LensModel.state_key` below ``layer``.
    """
    if st.layer != layer or st.hook != key_hook(layer):
        raise LensMemoryError(f"key statistics are for layer {st.layer} ({st.hook}), not layer {layer} ({key_hook(layer)})")
    now = lm.state_key(below_layer=layer)
    if st.state_key != now:
        raise LensMemoryError(f"key statistics for layer {layer} were computed on {st.model!r} with weights "
                              f"{st.state_key[:12]}, not on {lm.name!r}'s current weights {now[:12]} -- recompute "
                              f"them with key_statistics(model, {layer}, ...)")


def _cache_entry(lm: Any, corpus: Corpus, layer: int, cfg: StatsConfig, cache_dir: str | Path | None) -> tuple[Path, str]:
    """The cache entry of ``layer``'s statistic and its content key (weights below it, corpus bytes, hook, shape)."""
    from ..cache import content_key
    from ..embedded import cache_root

    state = lm.state_key(below_layer=layer)
    key = content_key(state, corpus.sha256, key_hook(layer), cfg.n_tokens, cfg.seq_len)
    d = cache_root(cache_dir) / "stats" / lm.name.replace("/", "--") / state[:16] / corpus.sha256[:16]
    return d / f"layer{layer}_t{cfg.n_tokens}_s{cfg.seq_len}", key


def _cached_stats(entry: Path, key: str) -> "KeyStats | None":
    """The statistic in cache ``entry`` if its key matches and its files verify (else ``None``: recompute)."""
    from ..cache import read_entry

    if read_entry(entry, key) is None:
        return None
    try:
        return KeyStats.load(entry / "stats")
    except Exception as exc:  # corrupt cache: recompute, never trust it
        log.warning("ignoring unreadable key-statistics cache %s (%s)", entry, exc)
        return None


def _store_stats(entry: Path, key: str, st: "KeyStats") -> None:
    """Publish ``st`` as cache ``entry`` (under its lock; a concurrent writer's partial is never deleted)."""
    from ..cache import store_entry

    store_entry(entry, key, lambda d: st.save(d / "stats"))


def _matches(st: KeyStats, lm: Any, corpus: Corpus, layer: int, cfg: StatsConfig) -> bool:
    return (st.layer == layer and st.model == lm.name and st.state_key == lm.state_key(below_layer=layer)
            and st.corpus.get("sha256") == corpus.sha256 and st.hook == key_hook(layer)
            and st.config.get("n_tokens") == cfg.n_tokens and st.config.get("seq_len") == cfg.seq_len)


class _Stop(Exception):
    pass


def shard_plan(n_batches: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous batch ranges ``[start, stop)``: ``shards`` of them (at most one per batch), sizes differing by <= 1."""
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise LensMemoryError(f"shards must be a positive integer, got {shards!r}")
    k = max(1, min(shards, n_batches))
    cuts = [round(i * n_batches / k) for i in range(k + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(k)]


@torch.no_grad()
def _moments_item(lm: Any, batches: list[torch.Tensor], shared: tuple) -> dict[str, Any]:
    """The execution seam's item: ``sum k kᵀ``, ``sum k`` and the key count of one shard of token batches."""
    layers, truncate = shared
    last = max(layers)
    acc: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}

    def capture(x: torch.Tensor, hook: Any, layer: int) -> None:
        k = x[:, 1:].reshape(-1, x.shape[-1]).float()  # drop BOS
        if layer not in acc:
            acc[layer] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64)
            sums[layer] = torch.zeros(x.shape[-1], dtype=torch.float64)
        acc[layer] += (k.T @ k).double().cpu()  # fp32 products of one batch, summed in fp64 on the CPU
        sums[layer] += k.sum(0).double().cpu()
        if truncate and layer == last:
            raise _Stop

    hooks = [(key_hook(j), lambda x, hook, j=j: capture(x, hook, j)) for j in layers]
    count = 0
    with lm.bridge.hooks(fwd_hooks=hooks):
        for ids in tqdm(batches, desc=f"key statistics L{layers}", unit="batch", leave=False):
            ids = ids.to(device=lm.device, dtype=torch.long)
            try:
                (lm.hf.base_model if truncate else lm.hf)(input_ids=ids)
            except _Stop:
                pass
            count += ids.shape[0] * (ids.shape[1] - 1)
    return {"mom2": acc, "sum": sums, "count": count}


def _estimate(lm: Any, layers: list[int], corpus: Corpus, cfg: StatsConfig, truncate: bool, shards: int | None,
              executor: Any) -> dict[int, KeyStats]:
    """Moments of the corpus's token batches, summed per shard (through the executor), then over shards in order."""
    from ..parallel import executor_for

    ex = executor_for(lm, executor)
    batches = [b.to(torch.int32) for b in token_blocks(lm, corpus, cfg.n_tokens, seq_len=cfg.seq_len,
                                                        batch_size=cfg.batch_size)]
    plan = shard_plan(len(batches), shards if shards is not None else ex.workers) if batches else []
    t0 = time.perf_counter()
    parts = ex.map(lm, _moments_item, [batches[a:b] for a, b in plan], shared=(layers, truncate),
                   desc=f"key statistics L{layers}", progress=len(plan) > 1)
    seconds = time.perf_counter() - t0
    count = sum(p["count"] for p in parts)
    if count == 0:
        raise LensMemoryError(f"corpus {corpus.name!r} yielded no tokens for key statistics")
    out = {}
    record = {"truncated_forward": truncate, "shard_plan": [list(r) for r in plan], "n_batches": len(batches),
              "executor": ex.describe()}
    for j in layers:
        mom2 = torch.zeros_like(parts[0]["mom2"][j])
        mean = torch.zeros_like(parts[0]["sum"][j])
        for p in parts:  # shard order: the plan, not the finishing order, fixes the sum
            mom2 += p["mom2"][j]
            mean += p["sum"][j]
        out[j] = KeyStats(layer=j, mom2=mom2 / count, mean=mean / count, n_tokens=count, hook=key_hook(j),
                          model=lm.name, state_key=lm.state_key(below_layer=j), corpus=corpus.to_dict(),
                          config=cfg.to_dict(), seconds=seconds, meta=dict(record))
    return out


def key_statistics(lm: Any, layers: int | Sequence[int], config: StatsConfig | None = None, *,
                   corpus: Corpus | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
                   truncate: bool = True, shards: int | None = None, executor: Any = None) -> dict[int, KeyStats]:
    """``E[k kᵀ]`` of the MLP keys at each of ``layers``, from the cache when a matching one exists.

    Args:
        lm: the model (its current weights, edits included, define the statistic).
        layers: one layer or several; missing ones are estimated together in one truncated pass.
        config: corpus, token count and block shape (:class:`StatsConfig`).
        corpus: an already-loaded corpus (else ``config.corpus`` is loaded).
        truncate: stop the forward pass at the last requested layer (set ``False`` only to
            measure what the truncation saves).
        shards: cut the token batches into this many contiguous shards, each summed on its own (on its own
            worker under an executor) and then added in shard order. Default: one per worker of the executor
            (1 in process). The plan is recorded in ``meta["shard_plan"]``; the same ``shards`` reproduces a
            statistic exactly, a different one changes it by float64 rounding only.
        executor: where the shards run (:mod:`lens_memory.parallel`; default ``lm.parallel``'s, else here).
    """
    cfg = config or StatsConfig()
    layers = [lm.check_layer(j) for j in ([layers] if isinstance(layers, int) else list(layers))]
    if not layers:
        raise LensMemoryError("key_statistics needs at least one layer, got none")
    corpus = corpus or resolve_corpus(lm, cfg.corpus)
    out: dict[int, KeyStats] = {}
    entries = {j: _cache_entry(lm, corpus, j, cfg, cache_dir) for j in layers}
    if use_cache:
        for j, (entry, key) in entries.items():
            st = _cached_stats(entry, key)
            if st is not None and _matches(st, lm, corpus, j, cfg):
                out[j] = st
    missing = sorted(set(layers) - set(out))
    if missing:
        new = _estimate(lm, missing, corpus, cfg, truncate, shards, executor)
        for j, st in new.items():
            if use_cache:
                _store_stats(*entries[j], st)
            out[j] = st
    return {j: out[j] for j in layers}
