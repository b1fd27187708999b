"""The artifact protocol: fit -> artifact -> ``apply(model) -> Handle``, and one Handle for all.

Every way of changing a model's memory is an *artifact* -- an object that changes nothing until
it is applied: a weight edit (:class:`~lens_memory.edit.Edit`), a steering vector, an LM-Steer
map, a fact vector, a KV memory bank, a RAG context and the prompting baseline. Applying returns
a :class:`Handle`; removing it restores the model bit for bit (tested per artifact kind)::

    with edit.apply(model):                 # one artifact
        ...
    with applied(model, edit, vector):      # several, removed in reverse order on exit
        ...

A handle is registered on the model (``model.handles``) while active, so the model can answer
"what is applied to me?" (``model.applied_edits`` and ``model.attached_memory`` are views of it),
and an artifact that may not be applied twice is refused with a message saying why.

Identity: an artifact records the :class:`~lens_memory.models.ModelIdentity` it was computed on,
and :func:`check_identity` compares **weight hashes** (not names): a renamed copy of the same
weights is accepted, different weights under the same name are refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from ..errors import ArtifactMismatchError

__all__ = ["Artifact", "Handle", "applied", "check_identity"]


@runtime_checkable
class Artifact(Protocol):
    """What every artifact offers: ``apply(model) -> Handle`` and ``save(dir) -> dir``."""

    def apply(self, lm: Any) -> "Handle": ...

    def save(self, path: str | Path) -> Path: ...


class Handle:
    """An applied artifact. ``remove()`` is idempotent; ``with`` removes on exit, also after an exception.

    Attributes:
        artifact: what was applied.
        lm: the model it was applied to.
        kind: ``"edit"``, ``"steering"``, ``"memory"``, ``"context"``, ``"prompting"`` ...
        active: ``True`` until removed.
    """

    kind = "artifact"

    def __init__(self, artifact: Any, lm: Any, undo: Callable[[], None] | None = None, *, kind: str | None = None):
        self.artifact, self.lm = artifact, lm
        self._undo_fn = undo
        if kind is not None:
            self.kind = kind
        self.active = False

    def _activate(self) -> "Handle":
        """Mark active and register on the model (call once the change is in place)."""
        self.active = True
        handles = getattr(self.lm, "handles", None)
        if handles is not None:
            handles.append(self)
        return self

    def _undo(self) -> None:
        if self._undo_fn is not None:
            self._undo_fn()

    def remove(self) -> None:
        """Undo the change (no-op when already removed)."""
        if not self.active:
            return
        self._undo()
        self.active = False
        handles = getattr(self.lm, "handles", None)
        if handles is not None and self in handles:
            handles.remove(self)

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"{type(self).__name__}({self.artifact!r}, {state})"


def active_handles(lm: Any, kind: str) -> list[Handle]:
    """The active handles of ``kind`` on ``lm``, in application order."""
    return [h for h in getattr(lm, "handles", []) if h.kind == kind and h.active]


def check_identity(recorded: dict[str, Any] | None, lm: Any, what: str) -> None:
    """Refuse ``lm`` unless its weights hash to the one ``recorded`` (a ModelIdentity dict).

    An empty record (an artifact built by hand) is accepted. Raises
    :class:`~lens_memory.errors.ArtifactMismatchError` naming both models and hashes.
    """
    if not recorded:
        return
    theirs, mine = str(recorded.get("weight_hash", "")), lm.identity.weight_hash
    if theirs != mine:  # the rule of ModelIdentity.same_model, on a record that may lack other fields
        raise ArtifactMismatchError(
            f"{what} was computed on {recorded.get('name')!r} (weights {theirs[:12] or 'unknown'}), "
            f"not on {lm.name!r} (weights {mine[:12]})")


@contextlib.contextmanager
def applied(lm: Any, *artifacts: Any, **apply_kwargs: Any) -> Iterator[list[Handle]]:
    """Apply ``artifacts`` in order and remove them in reverse on exit (also after an exception).

    ``apply_kwargs`` (e.g. ``strength=``) go to every ``apply``. For backward compatibility a single
    list or tuple of artifacts is accepted as well.
    """
    if len(artifacts) == 1 and isinstance(artifacts[0], (list, tuple)):
        artifacts = tuple(artifacts[0])
    handles: list[Handle] = []
    try:
        for a in artifacts:
            handles.append(a.apply(lm, **apply_kwargs))
        yield handles
    finally:
        for h in reversed(handles):
            h.remove()
