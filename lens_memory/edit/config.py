"""What ROME's and MEMIT's config dataclasses share: validation, per-model defaults, serialisation."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..errors import LensMemoryError
from .stats import StatsConfig

__all__ = ["EditConfigBase"]


class EditConfigBase:
    """Mixin for frozen config dataclasses with ``context_lengths`` and ``stats`` fields.

    Subclasses set ``MODEL_DEFAULTS`` (model name -> field overrides, each measured and documented).
    """

    MODEL_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def _validate(self, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
        for n in positive + non_negative:
            v = getattr(self, n)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if n in non_negative else v > 0)
            if not ok:
                raise LensMemoryError(
                    f"{type(self).__name__}.{n} must be {'>= 0' if n in non_negative else '> 0'}, got {v!r}")
        kl = getattr(self, "kl_position", "subject_last")
        if kl not in ("subject_last", "prompt_last"):
            raise LensMemoryError(f"{type(self).__name__}.kl_position must be 'subject_last' or 'prompt_last', got {kl!r}")
        object.__setattr__(self, "context_lengths", tuple(tuple(int(x) for x in c) for c in self.context_lengths))
        if isinstance(self.stats, dict):
            object.__setattr__(self, "stats", StatsConfig(**self.stats))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_model(cls, lm: Any, **overrides: Any):
        """The defaults for ``lm`` (paper values with ``MODEL_DEFAULTS`` applied), then ``overrides``."""
        name = lm if isinstance(lm, str) else lm.name
        return cls(**{**cls.MODEL_DEFAULTS.get(name, {}), **overrides})
