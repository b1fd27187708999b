"""Facts: the unit every memory mechanism writes and every evaluation reads back, and the sets of them.

A :class:`Fact` is a (subject, relation, object) triple phrased as a prompt template with
``{}`` for the subject -- ``"{} is located in the city of"`` + ``"Eiffel Tower"`` -> ``"Paris"``
-- plus what the editing literature needs: a counterfactual new target, paraphrase prompts
(generalisation) and neighbourhood prompts about *other* subjects that share the true object
(specificity), as in CounterFact (Meng et al. 2022).

Sources:

* :func:`builtin_facts` -- an offline set written for this project (``data/fact_tables.json``):
  per relation a template, paraphrase templates, and objects with the subjects that share them;
  each fact's neighbours are five other subjects with the same object and its counterfactual
  target is the next object of the same relation.
* :func:`load_known_facts` -- ROME's known-facts JSON (``known_1000.json`` style).
* :func:`load_counterfact` -- CounterFact JSON.
* :func:`load_facts` -- ``"builtin"``, a path or a URL, format detected from the records.

:func:`fact_split` assigns every fact, of any source, to a fixed ``"dev"`` or ``"test"`` split (a
salted SHA-256 of relation, subject and true object: the same fact is always in the same split,
whatever set it comes in). Whatever the suite *chooses* -- the edit layer from tracing, ROME's
clamp, MEMIT's λ, fact-vector layers -- is chosen on dev facts; tables report test facts, and
results record the split.

:func:`check_knowledge` reports which facts a model knows (its top-1 next token is the target's
first token) with the probabilities; :func:`sample_known_facts` picks known facts for an experiment.

This module holds the built-in set, :func:`load_facts`, the splits and the sampling; the rest lives
in :mod:`lens_memory.fact` (:class:`Fact`), :mod:`lens_memory.fact_files` (the file formats) and
:mod:`lens_memory.knowledge` (:func:`check_knowledge`), and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import LensMemoryError
from .fact import Fact, one_slot
from .fact_files import _read_records, facts_from_records, load_counterfact, load_known_facts
from .knowledge import KnowledgeResult, check_knowledge

__all__ = [
    "Fact",
    "one_slot",
    "builtin_facts",
    "load_known_facts",
    "load_counterfact",
    "load_facts",
    "sample_known_facts",
    "facts_from_records",
    "check_knowledge",
    "KnowledgeResult",
    "spread_facts",
    "fact_split",
    "split_facts",
    "SPLITS",
    "DEV_FRACTION",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# built-in set
# ---------------------------------------------------------------------------------------

N_NEIGHBOURS = 5


def builtin_facts(relations: Sequence[str] | None = None, split: str | None = None) -> list[Fact]:
    """The offline fact set shipped with lens_memory (see module docstring for how it is built).

    ``split``: ``"dev"``, ``"test"`` or ``None`` (all; see :func:`fact_split`).
    """
    tables = json.loads(files("lens_memory").joinpath("data/fact_tables.json").read_text())
    facts: list[Fact] = []
    for rel in tables["relations"]:
        if relations is not None and rel["relation_id"] not in relations:
            continue
        objects = list(rel["objects"])
        for oi, obj in enumerate(objects):
            subjects = rel["objects"][obj]
            new = objects[(oi + 1) % len(objects)]
            for si, subj in enumerate(subjects):
                others = [subjects[(si + k) % len(subjects)] for k in range(1, len(subjects))][:N_NEIGHBOURS]
                attr_subjects = rel["objects"][new][:N_NEIGHBOURS]
                facts.append(Fact(
                    subject=subj,
                    template=rel["template"],
                    target_true=obj,
                    target_new=new,
                    paraphrases=tuple(p.format(subj) for p in rel["paraphrases"]),
                    neighborhood=tuple(rel["template"].format(o) for o in others),
                    relation_id=rel["relation_id"],
                    case_id=len(facts),
                    generation_prompts=tuple(p.format(subj) for p in rel.get("generation", [])),
                    attribute_prompts=tuple(rel["template"].format(o) for o in attr_subjects),
                ))
    return split_facts(facts, split)


# ---------------------------------------------------------------------------------------
# loading, spreading and splitting
# ---------------------------------------------------------------------------------------


def load_facts(source: str | Path = "builtin", limit: int | None = None, split: str | None = None) -> list[Fact]:
    """``"builtin"``, ``"heldout"`` (the shipped CounterFact-format held-out set, written by
    ``analyses/make_heldout_facts.py``), or a known-facts / CounterFact / lens_memory fact JSON from a
    path or URL; ``split`` keeps one split (:func:`fact_split`) before ``limit``."""
    if str(source) == "builtin":
        facts = builtin_facts()
    elif str(source) == "heldout":
        facts = facts_from_records(json.loads(files("lens_memory").joinpath("data/counterfact_heldout.json").read_text()))
    else:
        facts = facts_from_records(_read_records(source))
    facts = split_facts(facts, split)
    if not facts:
        raise LensMemoryError(f"no facts in {source!r}" + (f" (split {split!r})" if split else ""))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        facts = facts[:limit]
    return facts


def spread_facts(facts: Sequence[Fact], n: int | None = None) -> list[Fact]:
    """Facts reordered round-robin over relations (first of each relation, then second ...), first ``n``.

    A prefix of the built-in set is one relation only (and its facts are each other's
    neighbourhood); spreading gives every relation a share of a small sample.
    """
    by_rel: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_rel[f.relation_id].append(f)
    out: list[Fact] = []
    queues = list(by_rel.values())
    i = 0
    while any(i < len(q) for q in queues):
        out += [q[i] for q in queues if i < len(q)]
        i += 1
    return out if n is None else out[:n]


SPLITS = ("dev", "test")
DEV_FRACTION = 0.4
_SPLIT_SALT = "lens_memory/fact-split/v1"


def fact_split(fact: Fact) -> str:
    """``"dev"`` (40%) or ``"test"`` (60%), fixed by a salted hash of relation, subject and true object."""
    key = f"{_SPLIT_SALT}|{fact.relation_id}|{fact.subject}|{fact.target_true}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0 ** 64
    return "dev" if u < DEV_FRACTION else "test"


def split_facts(facts: Iterable[Fact], split: str | None) -> list[Fact]:
    """The facts of one split (``None`` or ``"all"``: all of them, order kept)."""
    if split in (None, "all"):
        return list(facts)
    if split not in SPLITS:
        raise LensMemoryError(f"split must be 'dev', 'test' or 'all', got {split!r}")
    return [f for f in facts if fact_split(f) == split]


# ---------------------------------------------------------------------------------------
# facts the model knows
# ---------------------------------------------------------------------------------------


def sample_known_facts(lm: Any, facts: Sequence[Fact], n: int | None) -> list[Fact]:
    """The first ``n`` facts (spread over relations) that ``lm`` knows and that have a new target.

    Knowledge is checked in chunks, so only as many facts are scored as needed.
    """
    from .errors import NoKnownFactsError

    if n is not None and n < 1:
        raise LensMemoryError(f"the number of facts must be >= 1, got {n}")
    pool = [f for f in spread_facts(facts) if f.target_new]
    want = len(pool) if n is None else n
    out: list[Fact] = []
    step = max(8, 2 * want)
    for s in range(0, len(pool), step):
        out += check_knowledge(lm, pool[s:s + step]).known_facts()
        if len(out) >= want:
            break
    if not out:
        raise NoKnownFactsError(f"{lm.name} knows none of the {len(pool)} facts with a new target")
    return out[:want]
