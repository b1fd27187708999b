"""Token blocks: a :class:`~lens_memory.corpus.Corpus` cut into ``[batch, pos]`` token tensors for a model.

:func:`token_blocks` tokenizes the texts lazily, in order, joined by EOS into one stream, and cuts it
into BOS-prefixed rows of ``seq_len`` tokens -- the input key statistics and SAEs are estimated on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from jaxtyping import Int

from .errors import LensMemoryError

if TYPE_CHECKING:
    from .corpus import Corpus

__all__ = ["token_blocks"]

log = logging.getLogger("lens_memory.corpus")  # the corpus's logger, as before token blocks had their own module

_TOKENIZE_CHARS = 1 << 16  # token_blocks tokenizes long texts in pieces of about this many characters


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
