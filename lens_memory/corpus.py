"""Text corpora: the text that MLP key statistics (and later SAEs) are estimated on.

ROME and MEMIT need the second moment of an MLP layer's keys, ``C = E[k k^T]``, over
"generic" text; SAEs need many activations of the same kind. :func:`load_corpus` gives a
:class:`Corpus` (ordered documents plus a content hash that caches key statistics), and
:func:`token_blocks` turns it into ``[batch, pos]`` token blocks for a model.

Sources:

* ``"offline"`` (default) -- English prose that ships with every machine: the docstrings of a
  fixed list of Python standard-library modules and their public classes and functions, the
  language-reference pages that ``help()`` shows (``pydoc_data.topics``), then the long
  descriptions (READMEs) in the installed packages' ``*.dist-info/METADATA``. Code,
  doctests, markup and tables are dropped; paragraphs of mostly letters are kept. No network,
  nothing written to disk, deterministic for a given Python and set of installed packages
  (its ``sha256`` changes when they do, which invalidates any cache keyed on it). It is
  technical prose, not Wikipedia: good enough for key covariances on a laptop, and the
  ``"hf:..."`` sources exist for when the network does.
* a ``.txt``/``.md`` file, a directory of them (sorted, recursive), or ``"file:PATH"``.
* a list of strings (name ``"texts"``).
* ``"hf:NAME[:CONFIG[:SPLIT]]"`` -- the ``text`` column of a Hugging Face dataset (online).
* ``"samples[:N]"`` -- N tokens of text sampled from the model itself (:func:`model_samples`;
  needs the model, so resolve it with :func:`resolve_corpus`). General narrative prose, much
  closer to the text facts are phrased in than documentation, but slow to make on a CPU (the
  262k-vocabulary unembedding runs for every sampled token: ~50 tokens/s for Gemma 3 270M on
  2 cores), so it is generated once and cached on disk.

The offline texts are collected in :mod:`lens_memory.corpus_offline`; :func:`token_blocks` lives in
:mod:`lens_memory.corpus_tokens` and is re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .corpus_offline import _offline_texts_cached
from .corpus_tokens import token_blocks
from .errors import LensMemoryError

__all__ = ["Corpus", "load_corpus", "token_blocks", "model_samples", "resolve_corpus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """Documents in a deterministic order, with an order-sensitive content hash (a cache key)."""

    name: str
    texts: tuple[str, ...]
    sha256: str
    description: str

    def n_chars(self) -> int:
        return sum(len(t) for t in self.texts)

    def to_dict(self) -> dict[str, Any]:
        """Provenance without the texts: name, sha256, description, n_texts, n_chars."""
        return {"name": self.name, "sha256": self.sha256, "description": self.description,
                "n_texts": len(self.texts), "n_chars": self.n_chars()}

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, n_texts={len(self.texts)}, n_chars={self.n_chars()}, sha256={self.sha256[:12]})"


def _sha256(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:  # length-prefixed, so ("ab", "c") and ("a", "bc") differ
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def _make(name: str, texts: Sequence[str], what: str, max_texts: int | None) -> Corpus:
    texts = tuple(t for t in texts if t.strip())
    if max_texts is not None:
        texts = texts[:max_texts]
    if not texts:
        raise LensMemoryError(f"corpus {name!r} is empty ({what} contains no non-blank text)")
    n_chars = sum(len(t) for t in texts)
    return Corpus(name, texts, _sha256(texts),
                  f"{what}: {len(texts):,} documents, {n_chars:,} characters")


# -- loading -------------------------------------------------------------------------------


def _load_path(spec: str, path: Path, max_texts: int | None) -> Corpus:
    if not path.exists():
        raise LensMemoryError(f"corpus path {str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md"))
        if not files:
            raise LensMemoryError(f"corpus directory {str(path)!r} contains no .txt or .md files")
        what = f"{len(files)} text files under {path}"
    else:
        files, what = [path], f"text file {path}"
    return _make(spec, [p.read_text(encoding="utf-8", errors="replace") for p in files], what, max_texts)


def _load_hf(spec: str, max_texts: int | None) -> Corpus:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise LensMemoryError(f"bad corpus spec {spec!r} (expected 'hf:NAME[:CONFIG[:SPLIT]]')")
    name, config, split = (parts + [None, None])[:3]
    split = split or "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
        texts = ds["text"] if max_texts is None else ds.select(range(min(max_texts, len(ds))))["text"]
    except Exception as exc:  # noqa: BLE001 -- ImportError, ConnectionError, HF errors, missing column ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LensMemoryError(f"cannot load corpus {spec!r} (needs the network and the 'datasets' package: "
                              f"{first[:200]}); use 'offline' instead") from None
    return _make(spec, texts, f"Hugging Face dataset {name} ({config or 'default'}, {split})", max_texts)


def load_corpus(spec: str | os.PathLike | Sequence[str] | Corpus = "offline", *,
                max_texts: int | None = None) -> Corpus:
    """Load a text corpus.

    Args:
        spec: ``"offline"`` (default; see the module docstring), a path to a ``.txt``/``.md``
            file or a directory of them, ``"file:PATH"``, ``"hf:NAME[:CONFIG[:SPLIT]]"``, a list
            of strings, or a :class:`Corpus` (returned, truncated to ``max_texts``).
        max_texts: keep only the first this many documents.

    Raises:
        LensMemoryError: unknown spec, missing path, empty corpus, ``max_texts <= 0``, or a
            Hugging Face dataset that cannot be loaded (offline).
    """
    if max_texts is not None and (isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts <= 0):
        raise LensMemoryError(f"max_texts must be a positive integer or None, got {max_texts!r}")
    if isinstance(spec, Corpus):
        return spec if max_texts is None else _make(spec.name, spec.texts, f"first texts of {spec.name}", max_texts)
    if isinstance(spec, os.PathLike):
        return _load_path(os.fspath(spec), Path(spec), max_texts)
    if isinstance(spec, str):
        if spec == "offline":
            texts = list(_offline_texts_cached())
            return _make("offline", texts, "offline English prose (Python standard-library docstrings and "
                         "help topics, installed packages' descriptions)", max_texts)
        if spec.startswith("hf:"):
            return _load_hf(spec, max_texts)
        if spec.startswith("file:"):
            return _load_path(spec, Path(spec[5:]).expanduser(), max_texts)
        path = Path(spec).expanduser()
        if path.exists() or os.sep in spec or path.suffix.lower() in (".txt", ".md"):
            return _load_path(spec, path, max_texts)
        raise LensMemoryError(f"unknown corpus spec {spec!r} (expected 'offline', a path, 'file:PATH', "
                              "'hf:NAME[:CONFIG[:SPLIT]]' or a list of strings)")
    if isinstance(spec, Sequence):
        bad = [t for t in spec if not isinstance(t, str)]
        if bad:
            raise LensMemoryError(f"corpus texts must be strings, got {bad[0]!r}")
        return _make("texts", list(spec), "texts given directly", max_texts)
    raise LensMemoryError(f"unknown corpus spec {spec!r} of type {type(spec).__name__}")



_SAMPLE_SEEDS = ("The", "In", "He", "She", "It", "A", "When", "After", "During", "On", "This", "There", "Many",
                 "According to", "Born in", "Located in")


def _sample_resume(partial: Path, state_key: str, batch_size: int) -> tuple[list[str], torch.Tensor] | None:
    """The continuations and generator state a killed :func:`model_samples` run left behind, if any."""
    import base64

    from .io import read_checkpoint

    d = read_checkpoint(partial, lambda d: d if (d.get("state_key"), d.get("batch_size")) == (state_key, batch_size)
                        and "rng" in d else None, "model sample")
    if d is None:
        return None
    rng = torch.frombuffer(bytearray(base64.b64decode(d["rng"])), dtype=torch.uint8).clone()
    log.info("resuming the model sample from %d texts (%s)", len(d["continuations"]), partial)
    return list(d["continuations"]), rng


def model_samples(lm: Any, n_tokens: int = 16384, *, seed: int = 0, tokens_per_text: int = 128, top_k: int = 40,
                  batch_size: int = 32, cache_dir: str | os.PathLike | None = None) -> Corpus:
    """A corpus of about ``n_tokens`` tokens sampled (top-k) from ``lm`` after generic seed words, cached on disk.

    The cache key is the model, its weight state, ``n_tokens``, ``seed``, ``tokens_per_text`` and ``top_k``.
    A long sample checkpoints after every batch (``*.partial.json`` next to the cache file, with the
    generator state) and a rerun resumes it: the texts equal an uninterrupted run's, bit for bit.
    """
    import base64
    import json

    from .embedded import cache_root
    from .generation import generate
    from .io import atomic_path, read_checkpoint

    if not isinstance(n_tokens, int) or n_tokens < tokens_per_text:
        raise LensMemoryError(f"model_samples needs n_tokens >= {tokens_per_text}, got {n_tokens!r}")
    state = lm.state_key()
    path = (cache_root(cache_dir) / "corpus" / lm.name.replace("/", "--") / state[:16]
            / f"samples_t{n_tokens}_s{seed}_l{tokens_per_text}_k{top_k}.json")
    partial = path.with_name(path.stem + ".partial.json")
    texts = read_checkpoint(path, lambda d: d["texts"], "model sample cache")
    if texts is None:
        n_texts = -(-n_tokens // tokens_per_text)
        prompts = [_SAMPLE_SEEDS[i % len(_SAMPLE_SEEDS)] for i in range(n_texts)]
        log.info("sampling %d texts of %d tokens from %s (cached afterwards in %s)", n_texts, tokens_per_text,
                 lm.name, path)

        def checkpoint(done: list[str], rng: torch.Tensor) -> None:
            with atomic_path(partial) as tmp:
                tmp.write_text(json.dumps({"state_key": state, "batch_size": batch_size, "continuations": done,
                                           "rng": base64.b64encode(rng.numpy().tobytes()).decode()}))

        gen = generate(lm, prompts, max_new_tokens=tokens_per_text, top_k=top_k, seed=seed, batch_size=batch_size,
                       resume=_sample_resume(partial, state, batch_size), on_batch=checkpoint)
        texts = [p + g for p, g in zip(prompts, gen)]
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"model": lm.name, "state_key": state, "texts": texts}))
        partial.unlink(missing_ok=True)
    c = _make(f"samples:{n_tokens}", texts, f"text sampled from {lm.name} (top-{top_k}, seed {seed})", None)
    return c


def resolve_corpus(lm: Any, spec: Any) -> Corpus:
    """:func:`load_corpus`, plus ``"samples[:N]"`` (text sampled from ``lm``, see :func:`model_samples`)."""
    if isinstance(spec, str) and (spec == "samples" or spec.startswith("samples:")):
        n = spec.split(":", 1)[1] if ":" in spec else "16384"
        if not n.isdigit():
            raise LensMemoryError(f"corpus spec {spec!r}: expected 'samples' or 'samples:N' with N tokens")
        return model_samples(lm, int(n))
    return load_corpus(spec)
