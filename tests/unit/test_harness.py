"""The evaluation harness package: old import paths still work for one release, with a DeprecationWarning."""

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import lens_memory
import lens_memory.harness as harness

cost = importlib.import_module("lens_memory.harness.cost")
knowledge = importlib.import_module("lens_memory.harness.knowledge")
rev = importlib.import_module("lens_memory.harness.reversibility")  # the package attribute is the function

_EDIT, _MEMORY, _COMPARE = "lens_memory.edit.evaluate", "lens_memory.memory.evaluate", "lens_memory.compare"
MOVED = [
    (_EDIT, "EvalConfig", harness), (_EDIT, "EditEvaluation", harness), (_EDIT, "evaluate_edits", harness),
    (_EDIT, "METRICS", harness), (_EDIT, "GENERATION_METRICS", harness),
    (_EDIT, "_unedited_neighbours", knowledge), (_EDIT, "_applied", knowledge),
    (_MEMORY, "measure_cost", harness), (_MEMORY, "_generate_seconds", cost),
    (_COMPARE, "artifact_nbytes", harness), (_COMPARE, "reversibility", harness),
    (_COMPARE, "_probe_logits", rev), (_COMPARE, "_tensor_bytes", cost),
]


@pytest.mark.parametrize("old, name, new", MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_old_paths_warn_and_return_the_same_object(old, name, new):
    mod = importlib.import_module(old)
    with pytest.warns(DeprecationWarning) as rec:
        obj = getattr(mod, name)
    assert obj is getattr(new, name)
    assert [str(w.message) for w in rec] == [f"{old}.{name} moved to {new.__name__}.{name}"]
    assert rec[0].filename == __file__  # attributed to the caller, not to the shim


def test_from_import_of_an_old_path_warns():
    with pytest.warns(DeprecationWarning, match=r"lens_memory\.edit\.evaluate\.evaluate_edits moved to "
                                                r"lens_memory\.harness\.evaluate_edits"):
        from lens_memory.edit.evaluate import evaluate_edits
    assert evaluate_edits is harness.evaluate_edits
    with pytest.warns(DeprecationWarning, match=r"lens_memory\.compare\.reversibility moved"):
        from lens_memory.compare import reversibility
    assert reversibility is harness.reversibility


def test_unknown_names_still_raise_attribute_error():
    import lens_memory.edit.evaluate as old

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        old.nope  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope'"):
        from lens_memory.memory.evaluate import nope  # noqa: F401


def test_current_paths_do_not_warn():
    import lens_memory.compare as compare
    import lens_memory.edit as edit
    import lens_memory.memory as memory

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert edit.evaluate_edits is edit.evaluate_edits is harness.evaluate_edits
        assert edit.EvalConfig is harness.EvalConfig and edit.EditEvaluation is harness.EditEvaluation
        assert memory.measure_cost is harness.measure_cost
        assert lens_memory.evaluate_edits is harness.evaluate_edits and lens_memory.measure_cost is harness.measure_cost
        assert lens_memory.reversibility is harness.reversibility
        assert compare.Mechanism and compare.CompareConfig and compare.Comparison and compare.compare_mechanisms


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(Path(lens_memory.__file__).parent.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_the_memory_package_does_not_import_the_edit_package():
    root = Path(lens_memory.__file__).parent / "memory"
    for path in sorted(root.glob("*.py")):
        bad = {m for m in _imported_modules(path) if m == "lens_memory.edit" or m.startswith("lens_memory.edit.")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_knowledge_and_cost_rows_are_the_evaluations_rows(tiny):
    from lens_memory.facts import builtin_facts, spread_facts
    from lens_memory.rag import ContextArtifact, fact_documents

    facts = [f for f in spread_facts(builtin_facts()) if f.target_new][:2]
    rag = [ContextArtifact([t], ids=[i]) for i, t in fact_documents(facts)]
    cfg = harness.EvalConfig(fluency_facts=0)
    kn = harness.knowledge_rows(tiny, facts, {"rag": rag}, cfg, provenance={"rag": {"condition": "rag"}})
    s = harness.evaluate_edits(tiny, facts, rag, per_fact=True, config=cfg).summary()
    assert [r["mechanism"] for r in kn.rows] == ["none", "rag"] and set(kn.evaluations) == set(kn.seconds) == {"rag"}
    for row, phase in zip(kn.rows, ("pre", "post")):
        assert row["efficacy"] == s[phase]["efficacy_success"]
        assert row["neighborhood_ci95"] == s[phase]["neighborhood_success_ci95"]
        assert row["paraphrase_accuracy"] == s[phase]["paraphrase_accuracy"]
    assert kn.rows[1]["n_artifacts"] == 2 and kn.evaluations["rag"].provenance["condition"] == "rag"
    cost = harness.cost_rows(tiny, [facts[0].prompt], {"rag": rag, "all": [rag[0]]},
                             per_fact={"rag": True, "all": False}, new_tokens=2)
    assert list(cost) == ["none", "rag", "all"]
    assert cost["rag"]["context_tokens"] == cost["all"]["context_tokens"] > cost["none"]["context_tokens"]
