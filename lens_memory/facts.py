"""Facts: the unit every memory mechanism writes and every evaluation reads back.

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
first token) with the probabilities.
"""

from __future__ import annotations

import string

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .errors import FactFormatError, LensMemoryError

__all__ = [
    "Fact",
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
# loaders for the two standard formats
# ---------------------------------------------------------------------------------------


def _read_records(source: str | Path) -> list[dict[str, Any]]:
    text: str
    s = str(source)
    if s.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(s, timeout=30) as r:  # noqa: S310 - user-given URL
                text = r.read().decode("utf-8")
        except Exception as exc:  # noqa: BLE001
            raise LensMemoryError(f"cannot download facts from {s}: {exc}") from None
    else:
        p = Path(s).expanduser()
        if not p.is_file():
            raise LensMemoryError(f"fact file {s!r} does not exist")
        text = p.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactFormatError(f"{s}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "facts" in data:
        data = data["facts"]
    if not isinstance(data, list):
        raise FactFormatError(f"{s}: expected a JSON list of fact records, got {type(data).__name__}")
    return data


def _field(rec: Any, i: int, key: str, path: str, typ: type | tuple = str, required: bool = True) -> Any:
    rid = rec.get("case_id", rec.get("known_id", i)) if isinstance(rec, dict) else i
    if not isinstance(rec, dict):
        raise FactFormatError(f"record {i}: expected an object, got {type(rec).__name__}")
    if key not in rec:
        if required:
            raise FactFormatError(f"record {i} (id {rid}): missing field {path!r}")
        return None
    v = rec[key]
    if not isinstance(v, typ) or (isinstance(v, str) and not v.strip()):
        raise FactFormatError(f"record {i} (id {rid}): field {path!r} is invalid: {v!r}")
    return v


def _known_record(rec: Any, i: int) -> Fact:
    """One ROME ``known_1000.json`` record.

    ROME traces ``prompt`` with ``subject``; in the published file 478 of 1,209 prompts *extend* the
    template (template ``"{} is located in the continent"``, prompt ``"Vinson Massif is located in the
    continent of"``). So the prompt is what is traced: the fact's template is the prompt with the
    subject's first occurrence (where ROME's code finds it) replaced by ``{}``, and the record's own
    template is kept as ``record_template``.
    """
    subject = _field(rec, i, "subject", "subject")
    attribute = _field(rec, i, "attribute", "attribute")
    template = _field(rec, i, "template", "template")
    prompt = _field(rec, i, "prompt", "prompt", required=False)
    rid = rec.get("known_id", i)
    if not one_slot(template):
        raise FactFormatError(f"record {i} (id {rid}): field 'template' needs exactly one '{{}}' and no other "
                              f"format field: {template!r}")
    if prompt is None:
        prompt = template.format(subject)
    at = prompt.find(subject)
    if at < 0:
        raise FactFormatError(f"record {i} (id {rid}): field 'prompt' {prompt!r} does not contain the subject {subject!r}")
    derived = prompt[:at].replace("{", "{{").replace("}", "}}") + "{}" + \
        prompt[at + len(subject):].replace("{", "{{").replace("}", "}}")
    return Fact(subject=subject, template=derived, target_true=attribute, relation_id=str(rec.get("relation_id", "")),
                case_id=rid, record_template=template if template != derived else None)


def _counterfact_record(rec: Any, i: int) -> Fact:
    rr = _field(rec, i, "requested_rewrite", "requested_rewrite", dict)
    cid = rec.get("case_id", i)
    prompt = _field(rr, i, "prompt", "requested_rewrite.prompt")
    subject = _field(rr, i, "subject", "requested_rewrite.subject")
    tt = _field(rr, i, "target_true", "requested_rewrite.target_true", dict)
    tn = _field(rr, i, "target_new", "requested_rewrite.target_new", dict)
    t_true = _field(tt, i, "str", "requested_rewrite.target_true.str")
    t_new = _field(tn, i, "str", "requested_rewrite.target_new.str")
    if prompt.count("{}") != 1:
        raise FactFormatError(f"record {i} (case_id {cid}): field 'requested_rewrite.prompt' needs exactly one '{{}}': {prompt!r}")
    lists = {}
    for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts"):
        v = rec.get(key, [])
        if not isinstance(v, list) or not all(isinstance(p, str) and p.strip() for p in v):
            raise FactFormatError(f"record {i} (case_id {cid}): field {key!r} must be a list of strings")
        lists[key] = tuple(v)
    return Fact(subject=subject, template=prompt, target_true=t_true.strip(), target_new=t_new.strip(),
                paraphrases=lists["paraphrase_prompts"], neighborhood=lists["neighborhood_prompts"],
                relation_id=str(rr.get("relation_id", "")), case_id=cid,
                generation_prompts=lists["generation_prompts"], attribute_prompts=lists["attribute_prompts"])


def facts_from_records(records: Iterable[Any]) -> list[Fact]:
    """Parse records of either standard format (detected per record)."""
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, dict) and "requested_rewrite" in rec:
            out.append(_counterfact_record(rec, i))
        elif isinstance(rec, dict) and "template" in rec and "attribute" in rec:
            out.append(_known_record(rec, i))
        elif isinstance(rec, dict) and "target_true" in rec and "template" in rec:
            try:
                out.append(Fact.from_dict(rec))
            except TypeError as exc:
                raise FactFormatError(f"record {i}: {exc}") from None
        else:
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise FactFormatError(
                f"record {i}: not a known-facts record (subject, attribute, template, prompt) nor a "
                f"CounterFact record (requested_rewrite ...); it has {keys}"
            )
    return out


def load_known_facts(source: str | Path) -> list[Fact]:
    """ROME's known-facts JSON from a path or URL."""
    return [_known_record(r, i) for i, r in enumerate(_read_records(source))]


def load_counterfact(source: str | Path) -> list[Fact]:
    """CounterFact JSON from a path or URL."""
    return [_counterfact_record(r, i) for i, r in enumerate(_read_records(source))]


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
# what does the model know?
# ---------------------------------------------------------------------------------------


@dataclass
class KnowledgeResult:
    """Per fact: the model's top-1 next token and the probability of the true target's first token."""

    model: dict[str, Any]
    facts: list[Fact]
    top1: list[str]
    top1_prob: list[float]
    target_prob: list[float]
    known: list[bool] = field(default_factory=list)

    @property
    def n_known(self) -> int:
        return int(sum(self.known))

    @property
    def fraction_known(self) -> float:
        return self.n_known / max(1, len(self.facts))

    def known_facts(self) -> list[Fact]:
        return [f for f, k in zip(self.facts, self.known) if k]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({
            "case_id": [f.case_id for f in self.facts],
            "relation_id": [f.relation_id for f in self.facts],
            "prompt": [f.prompt for f in self.facts],
            "target_true": [f.target_true for f in self.facts],
            "top1": self.top1,
            "top1_prob": self.top1_prob,
            "target_prob": self.target_prob,
            "known": self.known,
        })


@torch.no_grad()
def check_knowledge(lm: Any, facts: Sequence[Fact], batch_size: int = 32) -> KnowledgeResult:
    """Which facts ``lm`` knows: top-1 next token after the prompt equals the target's first token.

    Prompts of equal token length are batched; logits are computed at the last position only.
    """
    encoded = [lm.encode(f.prompt) for f in facts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    top1 = [""] * len(facts)
    top1_p = [0.0] * len(facts)
    tgt_p = [0.0] * len(facts)
    known = [False] * len(facts)
    st = lm.stack
    for _, idx in sorted(groups.items()):
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            ids = torch.stack([encoded[i] for i in chunk]).to(lm.device)
            probs = st.logits(st.run(st.embed(ids))[:, -1]).softmax(-1)
            p_top, i_top = probs.max(-1)
            for row, i in enumerate(chunk):
                t0 = lm.continuation_ids(facts[i].target_true)[0]
                top1[i] = lm.decode(int(i_top[row]))
                top1_p[i] = float(p_top[row])
                tgt_p[i] = float(probs[row, t0])
                known[i] = int(i_top[row]) == t0
    return KnowledgeResult(model=lm.identity.to_dict(), facts=list(facts), top1=top1, top1_prob=top1_p,
                           target_prob=tgt_p, known=known)


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
