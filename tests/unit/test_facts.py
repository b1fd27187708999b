import json

import pytest

from lens_memory.errors import FactFormatError
from lens_memory.facts import Fact, builtin_facts, check_knowledge, load_counterfact, load_facts, load_known_facts

KNOWN = {"known_id": 0, "subject": "Eiffel Tower", "attribute": "Paris", "template": "The {} is located in the city of",
         "prompt": "The Eiffel Tower is located in the city of", "relation_id": "P131"}
CF = {"case_id": 7, "requested_rewrite": {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower",
                                          "target_true": {"str": "Paris"}, "target_new": {"str": "Rome"}, "relation_id": "P131"},
      "paraphrase_prompts": ["Where is the Eiffel Tower? It is in"], "neighborhood_prompts": ["The Louvre is located in the city of"],
      "attribute_prompts": [], "generation_prompts": ["The Eiffel Tower is"]}


def _write(tmp_path, records):
    p = tmp_path / "facts.json"
    p.write_text(json.dumps(records))
    return p


def test_builtin_set_shape():
    facts = builtin_facts()
    assert len(facts) >= 200
    assert len({f.relation_id for f in facts}) >= 10
    for f in facts:
        assert len(f.paraphrases) >= 2 and len(f.neighborhood) >= 5
        assert f.target_new and f.target_new != f.target_true
        assert f.subject in f.prompt and "{}" not in f.prompt


def test_known_facts_loader(tmp_path):
    (f,) = load_known_facts(_write(tmp_path, [KNOWN]))
    assert f.prompt == KNOWN["prompt"] and f.target_true == "Paris" and f.case_id == 0
    assert load_facts(_write(tmp_path, [KNOWN]))[0] == f


# two records exactly as ROME's published known_1000.json has them: the prompt extends the template
ROME_KNOWN = [
    {"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica", "template": "{} is located in the continent",
     "prediction": " of Antarctica. It is the highest mountain in Antarctica", "prompt":
     "Vinson Massif is located in the continent of", "relation_id": "P30"},
    {"known_id": 1, "subject": "Beats Music", "attribute": "Apple", "template": "{} is owned by",
     "prediction": " Apple, which is also the owner of Beats Electronics", "prompt": "Beats Music is owned by",
     "relation_id": "P127"},
]


def test_rome_known_1000_records_whose_prompt_extends_the_template(tmp_path):
    a, b = load_facts(_write(tmp_path, ROME_KNOWN))
    assert a.prompt == "Vinson Massif is located in the continent of"  # the prompt is what ROME traces
    assert a.template == "{} is located in the continent of" and a.record_template == "{} is located in the continent"
    assert b.prompt == "Beats Music is owned by" and b.record_template is None
    assert Fact.from_dict(a.to_dict()) == a


def test_subject_is_located_at_the_template_slot(tiny):
    """The subject also occurs later in the prompt: the noise and keys go on the template's slot."""
    f = Fact(subject="Paris", template="{} is the capital of France; the city of Paris is in", target_true="Europe")
    s0, s1 = tiny.fact_subject_range(f)
    assert s0 == 1  # right after BOS, not the second "Paris"
    assert tiny.decode(tiny.encode(f.prompt)[s0:s1]).strip() == "Paris"
    g = Fact(subject="Paris", template="The city of Paris: {} is in", target_true="France")
    t0, _ = tiny.fact_subject_range(g)
    assert t0 > tiny.subject_range(g.prompt, "Paris")[0]  # the slot is the second occurrence here


def test_counterfact_loader(tmp_path):
    (f,) = load_counterfact(_write(tmp_path, [CF]))
    assert f.target_new == "Rome" and f.neighborhood == ("The Louvre is located in the city of",) and f.case_id == 7


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("subject"), r"record 0 \(id 0\): missing field 'subject'"),
    (lambda r: r.update(attribute=""), r"field 'attribute' is invalid"),
    (lambda r: r.update(template="no placeholder"), r"field 'template' needs exactly one"),
    (lambda r: r.update(prompt="something else"), r"field 'prompt' 'something else' does not contain the subject"),
])
def test_known_facts_rejects_bad_records(tmp_path, mutate, message):
    rec = dict(KNOWN)
    mutate(rec)
    with pytest.raises(FactFormatError, match=message):
        load_known_facts(_write(tmp_path, [KNOWN, rec][1:]))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("requested_rewrite"), r"missing field 'requested_rewrite'"),
    (lambda r: r["requested_rewrite"]["target_new"].pop("str"), r"missing field 'requested_rewrite.target_new.str'"),
    (lambda r: r["requested_rewrite"].update(subject=""), r"field 'requested_rewrite.subject' is invalid"),
    (lambda r: r.update(paraphrase_prompts="oops"), r"field 'paraphrase_prompts' must be a list"),
])
def test_counterfact_rejects_bad_records(tmp_path, mutate, message):
    rec = json.loads(json.dumps(CF))
    mutate(rec)
    with pytest.raises(FactFormatError, match=message):
        load_counterfact(_write(tmp_path, [rec]))


def test_unknown_format_and_bad_json(tmp_path):
    with pytest.raises(FactFormatError, match="record 0: not a known-facts record"):
        load_facts(_write(tmp_path, [{"foo": 1}]))
    p = tmp_path / "broken.json"
    p.write_text("[{")
    with pytest.raises(FactFormatError, match="not valid JSON"):
        load_facts(p)


def test_fact_validation():
    with pytest.raises(FactFormatError, match="field 'target_true' must be a non-empty string"):
        Fact(subject="X", template="{} is", target_true="")
    with pytest.raises(FactFormatError, match="field 'subject'"):
        Fact(subject=" ", template="{} is", target_true="y")


def test_check_knowledge_matches_argmax(tiny):
    facts = builtin_facts()[:6]
    k = check_knowledge(tiny, facts)
    for f, known, top in zip(facts, k.known, k.top1):
        probs = tiny.next_token_probs(f.prompt)
        assert (int(probs.argmax()) == tiny.continuation_ids(f.target_true)[0]) == known
        assert tiny.decode(int(probs.argmax())) == top


def test_dev_test_split_is_fixed_disjoint_and_independent_of_the_set():
    from lens_memory.facts import fact_split, split_facts

    facts = builtin_facts()
    dev, test = builtin_facts(split="dev"), builtin_facts(split="test")
    assert len(dev) + len(test) == len(facts) and not {f.case_id for f in dev} & {f.case_id for f in test}
    assert 0.3 < len(dev) / len(facts) < 0.5
    assert all(fact_split(f) == "dev" for f in dev)
    # the same fact in another set (other case_id, prompts) keeps its split
    moved = [Fact(subject=f.subject, template=f.template, target_true=f.target_true, relation_id=f.relation_id,
                  case_id=10_000 + i) for i, f in enumerate(facts[:50])]
    assert [fact_split(f) for f in moved] == [fact_split(f) for f in facts[:50]]
    with pytest.raises(Exception, match="split must be 'dev', 'test' or 'all', got 'train'"):
        split_facts(facts, "train")
