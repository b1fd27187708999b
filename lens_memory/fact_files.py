"""Fact files: reading the two standard fact formats (and lens_memory's own) into :class:`~lens_memory.fact.Fact` s.

* :func:`load_known_facts` -- ROME's known-facts JSON (``known_1000.json`` style).
* :func:`load_counterfact` -- CounterFact JSON.
* :func:`facts_from_records` -- records of either format, or lens_memory fact dicts, detected per record.

A source is a path or an ``http(s)://`` URL holding a JSON list of records (or ``{"facts": [...]}``);
malformed records raise :class:`~lens_memory.errors.FactFormatError` naming the record and field.
:func:`lens_memory.facts.load_facts` is the entry point that also knows ``"builtin"`` and ``"heldout"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .errors import FactFormatError, LensMemoryError
from .fact import Fact, one_slot

__all__ = ["load_known_facts", "load_counterfact", "facts_from_records"]


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
