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
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import functools
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Int

from .errors import LensMemoryError

__all__ = ["Corpus", "load_corpus", "token_blocks", "model_samples", "resolve_corpus"]

log = logging.getLogger(__name__)

# Standard-library modules with no side effects on import (no GUI, no easter eggs, no tests,
# nothing deprecated). Fixed and sorted so the offline corpus is deterministic.
_STDLIB_MODULES = sorted("""
abc argparse array ast asyncio atexit base64 bdb binascii bisect builtins bz2 calendar cmath cmd code codecs
codeop collections collections.abc colorsys compileall concurrent.futures configparser contextlib
contextvars copy copyreg cProfile csv ctypes dataclasses datetime dbm decimal difflib dis doctest email
email.charset email.generator email.header email.headerregistry email.message email.parser email.policy
email.utils enum errno faulthandler fcntl filecmp fileinput fnmatch fractions ftplib functools gc getopt
getpass gettext glob graphlib grp gzip hashlib heapq hmac html html.parser http http.client http.cookiejar
http.cookies http.server imaplib importlib importlib.abc importlib.machinery importlib.metadata
importlib.resources importlib.util inspect io ipaddress itertools json keyword linecache locale logging
logging.config logging.handlers lzma mailbox marshal math mimetypes mmap modulefinder multiprocessing
multiprocessing.managers multiprocessing.pool netrc numbers operator optparse os os.path pathlib pdb pickle
pickletools pkgutil platform plistlib poplib posix pprint profile pstats pty pwd py_compile pyclbr pydoc
pyexpat queue quopri random re reprlib resource runpy sched secrets select selectors shelve shlex shutil
signal site smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct subprocess
symtable sys sysconfig tabnanny tarfile tempfile termios textwrap threading time timeit token tokenize
tomllib trace traceback tracemalloc tty types typing unicodedata unittest unittest.mock urllib.error
urllib.parse urllib.request urllib.robotparser uuid venv warnings wave weakref wsgiref.handlers
wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree
xml.sax xml.sax.handler xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split())

_MIN_PARAGRAPH = 40  # characters
_MIN_LETTERS = 0.7  # fraction of letters among a kept paragraph's non-space characters
_TOKENIZE_CHARS = 1 << 16  # token_blocks tokenizes long texts in pieces of about this many characters


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


# -- offline corpus ------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^(```|~~~)[^\n]*$", re.M | re.S)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # markdown [text](url) -> text, images -> alt text
_TAG = re.compile(r"<[^>\n]*>")
_BULLET = re.compile(r"([-*+]|\d+[.)])\s+")  # list items start paragraphs
_CODE_START = (">>>", "...", "..", "|", "+-", "$ ", "#", "=", "---", "<", "{", "}", "[", "]", "(", ")", "@")
_CODE_LINE = re.compile(r"[=;{}<>\[\]]|\w\(|\)$|[:,]$")
_MARKUP = re.compile(r"`+|\*\*|:[a-z:]+:(?=`)|https?://\S+")  # ``code``, **bold**, :func:`name`, URLs


def _letters(s: str) -> float:
    chars = [c for c in s if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(len(chars), 1)


def _is_code(line: str) -> bool:
    s = line.strip()
    if s.startswith(_CODE_START) or _letters(s) < 0.5:
        return True
    indent = len(line) - len(line.lstrip())  # 4+ spaces: an indented block, code unless it reads as prose
    return indent >= 4 and (_letters(s) < 0.75 or _CODE_LINE.search(s) is not None)


def _clean_prose(doc: str) -> str:
    """Keep the prose paragraphs of a docstring or README (code, doctests, markup and tables dropped)."""
    doc = _FENCE.sub("\n", inspect.cleandoc(doc).expandtabs(8))
    doc = _TAG.sub(" ", _LINK.sub(r"\1", _LINK.sub(r"\1", doc)))  # links twice: [![alt](img)](url)
    paragraphs, lines = [], []
    for line in doc.splitlines() + [""]:
        s = line.strip()
        bullet = _BULLET.match(s)
        if s and not _is_code(line) and not (bullet and lines):
            lines.append(s[bullet.end():] if bullet else s)
            continue
        if lines:
            p = " ".join(_MARKUP.sub("", " ".join(lines)).split())
            if len(p) >= _MIN_PARAGRAPH and _letters(p) >= _MIN_LETTERS:
                paragraphs.append(p)
        lines = [s[bullet.end():]] if s and bullet and not _is_code(line) else []
    return "\n\n".join(paragraphs)


def _stdlib_docs() -> Iterator[str]:
    for modname in _STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 -- a module missing from this build
            continue
        yield mod.__doc__ or ""
        for name, obj in sorted(vars(mod).items()):
            owner = getattr(obj, "__module__", None) or ""
            if name.startswith("_") or not (owner == modname or owner.startswith(modname + ".")):
                continue  # defined elsewhere (or private)
            if inspect.isclass(obj):
                yield obj.__doc__ or ""
                for mname, m in sorted(vars(obj).items()):
                    if not mname.startswith("_") and (inspect.isroutine(m) or inspect.isdatadescriptor(m)
                                                      or isinstance(m, (classmethod, staticmethod))):
                        yield getattr(m, "__doc__", None) or ""
            elif inspect.isroutine(obj):
                yield obj.__doc__ or ""


def _pydoc_topics() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics  # the language reference pages that help() shows
    except ImportError:
        return
    for key in sorted(topics):
        yield topics[key]


def _metadata_docs() -> Iterator[str]:
    from importlib.metadata import distributions

    dists = {}
    for d in distributions():  # one per name (the first on sys.path wins, as for imports)
        md = d.metadata
        name = re.sub(r"[-_.]+", "-", ((md["Name"] if md is not None else None) or "").lower())
        if name and name != "lens-memory" and name not in dists:  # not our own README: it changes often
            dists[name] = d
    for name in sorted(dists):
        yield dists[name].metadata["Description"] or ""


@functools.lru_cache(maxsize=1)
def _offline_texts_cached() -> tuple[str, ...]:
    return tuple(_offline_texts())


def _offline_texts() -> list[str]:
    """The offline corpus, collected in a fresh interpreter.

    Which attributes a module has depends on what the process imported before (lazy attributes,
    submodules), so collecting in the calling process would make the corpus -- and every cache
    keyed on its hash -- depend on import order. A child interpreter sees the same state every time.
    """
    import json
    import subprocess
    import sys

    code = "import json, sys; from lens_memory.corpus import _collect_offline_texts; json.dump(_collect_offline_texts(), sys.stdout)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
        return json.loads(out.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:  # pragma: no cover - fall back in-process
        log.warning("collecting the offline corpus in a child interpreter failed (%s); collecting in-process", exc)
        return _collect_offline_texts()


def _collect_offline_texts() -> list[str]:
    texts, seen = [], set()
    for doc in (*_stdlib_docs(), *_pydoc_topics(), *_metadata_docs()):
        text = _clean_prose(doc) if isinstance(doc, str) else ""
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


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


# -- tokens --------------------------------------------------------------------------------


def _pieces(text: str, size: int = _TOKENIZE_CHARS) -> Iterator[str]:
    """``text`` cut after newlines into pieces of at most ~``size`` characters (lazy tokenization)."""
    i = 0
    while i < len(text):
        j = len(text) if i + size >= len(text) else text.rfind("\n", i, i + size) + 1
        j = j if j > i else min(i + size, len(text))
        yield text[i:j]
        i = j


def _token_stream(tokenizer: Any, texts: Sequence[str]) -> Iterator[int]:
    eos = tokenizer.eos_token_id
    for k, text in enumerate(texts):
        if k and eos is not None:
            yield eos
        for piece in _pieces(text):
            yield from tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]


def token_blocks(lm: Any, corpus: Corpus, n_tokens: int, *, seq_len: int = 128,
                 batch_size: int = 16) -> Iterator[Int[torch.Tensor, "batch pos"]]:
    """Yield ``[batch, pos]`` LongTensors (CPU) of consecutive corpus tokens, ``pos == seq_len``.

    The texts are tokenized lazily, in order, joined by EOS (when the tokenizer has one) into
    one stream, and cut into rows of ``seq_len - 1`` tokens each prefixed with BOS (``seq_len``
    tokens when there is no BOS). Rows are yielded until ``n_tokens`` positions (BOS included)
    have been yielded, rounded up to whole rows; the last batch may have fewer rows. When the
    corpus runs out first, a warning is logged and iteration stops (the corpus is not cycled).
    Arguments are checked at the call, not at the first ``next``.
    """
    for what, v, lo in (("n_tokens", n_tokens, 1), ("seq_len", seq_len, 2), ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise LensMemoryError(f"{what} must be an integer >= {lo}, got {v!r}")
    return _blocks(lm.tokenizer, corpus, n_tokens, seq_len, batch_size)


def _blocks(tokenizer: Any, corpus: Corpus, n_tokens: int, seq_len: int, batch_size: int) -> Iterator[torch.Tensor]:
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = seq_len - len(prefix)
    rows: list[list[int]] = []
    row: list[int] = []
    done = seen = 0
    for tok in _token_stream(tokenizer, corpus.texts):
        seen += 1
        row.append(tok)
        if len(row) < body:
            continue
        rows.append(prefix + row)
        row = []
        done += seq_len
        if len(rows) == batch_size or done >= n_tokens:
            yield torch.tensor(rows, dtype=torch.long)
            rows = []
        if done >= n_tokens:
            return
    if rows:
        yield torch.tensor(rows, dtype=torch.long)
    log.warning("corpus %r ran out after %d tokens: yielded %d of the %d requested (rows of %d, not cycled)",
                corpus.name, seen, done, n_tokens, seq_len)


_SAMPLE_SEEDS = ("The", "In", "He", "She", "It", "A", "When", "After", "During", "On", "This", "There", "Many",
                 "According to", "Born in", "Located in")


def model_samples(lm: Any, n_tokens: int = 16384, *, seed: int = 0, tokens_per_text: int = 128, top_k: int = 40,
                  batch_size: int = 32, cache_dir: str | os.PathLike | None = None) -> Corpus:
    """A corpus of about ``n_tokens`` tokens sampled (top-k) from ``lm`` after generic seed words, cached on disk.

    The cache key is the model, its weight state, ``n_tokens``, ``seed``, ``tokens_per_text`` and ``top_k``.
    """
    import json

    from .embedded import cache_root
    from .generation import generate
    from .io import atomic_path

    if not isinstance(n_tokens, int) or n_tokens < tokens_per_text:
        raise LensMemoryError(f"model_samples needs n_tokens >= {tokens_per_text}, got {n_tokens!r}")
    path = (cache_root(cache_dir) / "corpus" / lm.name.replace("/", "--") / lm.state_key()[:16]
            / f"samples_t{n_tokens}_s{seed}_l{tokens_per_text}_k{top_k}.json")
    texts = None
    if path.exists():
        try:
            texts = json.loads(path.read_text())["texts"]
        except (ValueError, KeyError) as exc:
            log.warning("ignoring unreadable sample cache %s (%s)", path, exc)
    if texts is None:
        n_texts = -(-n_tokens // tokens_per_text)
        prompts = [_SAMPLE_SEEDS[i % len(_SAMPLE_SEEDS)] for i in range(n_texts)]
        log.info("sampling %d texts of %d tokens from %s (cached afterwards in %s)", n_texts, tokens_per_text,
                 lm.name, path)
        gen = generate(lm, prompts, max_new_tokens=tokens_per_text, top_k=top_k, seed=seed, batch_size=batch_size)
        texts = [p + g for p, g in zip(prompts, gen)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"model": lm.name, "state_key": lm.state_key(), "texts": texts}))
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
