"""The :class:`Fact` record: one (subject, relation, object) triple and the prompts that test a change to it.

A fact is a prompt template with ``{}`` for the subject -- ``"{} is located in the city of"`` +
``"Eiffel Tower"`` -> ``"Paris"`` -- plus what the editing literature needs: a counterfactual new
target, paraphrase prompts (generalisation) and neighbourhood prompts about *other* subjects that
share the true object (specificity), as in CounterFact (Meng et al. 2022). :func:`one_slot` is the
template check. Fact sets (built-in, files, splits) are in :mod:`lens_memory.facts`.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from typing import Any

from .errors import FactFormatError

__all__ = ["Fact", "one_slot"]


def one_slot(template: str) -> bool:
    """True if ``template.format(x)`` puts ``x`` in exactly one place: one bare ``{}``, no other field."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
        template.format("x")
    except (ValueError, IndexError, KeyError):
        return False
    return fields == [""] and "{}" in template


@dataclass(frozen=True)
class Fact:
    """One factual association and the prompts used to test a change to it.

    Attributes:
        subject: the entity, e.g. ``"Eiffel Tower"``; must occur in ``prompt.format(subject)``.
        template: prompt with one ``{}`` for the subject, e.g. ``"The {} is located in the city of"``.
        target_true: the true object (``"Paris"``), without leading space.
        target_new: a counterfactual object for editing (``"Rome"``), or ``None``.
        paraphrases: full prompts expressing the same relation for the same subject.
        neighborhood: full prompts about other subjects whose true object is ``target_true``.
        relation_id: e.g. ``"P131"``.
        case_id: identifier within its source.
        generation_prompts: prompts for fluency / consistency of free generation.
        attribute_prompts: prompts about other subjects whose true object is ``target_new``.
        record_template: the source record's own template where it differs from ``template``
            (ROME's known facts: the prompt extends it); metadata only.
    """

    subject: str
    template: str
    target_true: str
    target_new: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()
    relation_id: str = ""
    case_id: int | str | None = None
    generation_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    record_template: str | None = None

    def __post_init__(self) -> None:
        where = f"fact {self.case_id!r}" if self.case_id is not None else f"fact about {self.subject!r}"
        for name in ("subject", "template", "target_true"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise FactFormatError(f"{where}: field {name!r} must be a non-empty string, got {v!r}")
        if not one_slot(self.template):
            raise FactFormatError(f"{where}: field 'template' must contain exactly one '{{}}' (and no other "
                                  f"format field; write literal braces as '{{{{' '}}}}'), got {self.template!r}")
        if self.target_new is not None and (not isinstance(self.target_new, str) or not self.target_new.strip()):
            raise FactFormatError(f"{where}: field 'target_new' must be a non-empty string or null, got {self.target_new!r}")
        for name in ("paraphrases", "neighborhood", "generation_prompts", "attribute_prompts"):
            v = getattr(self, name)
            if isinstance(v, str) or not all(isinstance(p, str) and p.strip() for p in v):
                raise FactFormatError(f"{where}: field {name!r} must be a list of non-empty strings, got {v!r}")
            object.__setattr__(self, name, tuple(v))

    @property
    def prompt(self) -> str:
        """The template with the subject filled in."""
        return self.template.format(self.subject)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fact":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise FactFormatError(f"fact {d.get('case_id')!r}: unknown field(s) {sorted(unknown)}")
        return cls(**d)
