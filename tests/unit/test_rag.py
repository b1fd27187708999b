"""RAG baseline: persistent document store (ADD/UPDATE/DELETE), BM25 and dense retrieval, prompts."""

import json
import re
import math
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from lens_memory.errors import FactFormatError, LensMemoryError
from lens_memory.facts import Fact
from lens_memory.rag import (DEFAULT_TEMPLATE, BM25Retriever, DenseRetriever, Document, DocumentNotFoundError,
                             DocumentStore, Hit, StoreFormatError, assemble_prompt, build_fact_store,
                             fact_documents, get_retriever, retrieval_recall, tokenize)

TOY = {"d1": "The cat sat", "d2": "the dog sat on the mat", "d3": "Cats and dogs"}


def toy_store(path=None):
    s = DocumentStore(path)
    for i, t in TOY.items():
        s.add(t, doc_id=i)
    return s


class BagOfLetters:
    """A fake sentence-transformers encoder: letter counts; records every text it encodes."""

    def __init__(self):
        self.seen = []

    def encode(self, texts, **kw):
        self.seen.extend(texts)
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for r, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[r, ord(ch) - 97] += 1
        return out


# --------------------------------------------------------------------------- store


def test_crud_round_trip():
    s = DocumentStore()
    a = s.add("Paris is in France.", metadata={"src": "x"})
    b = s.add("Rome is in Italy.", doc_id="rome")
    assert (a, b) == ("doc-0", "rome")
    assert len(s) == 2 and "rome" in s and a in s and "nope" not in s and 3 not in s
    assert s.ids() == ["doc-0", "rome"] and s.texts() == ["Paris is in France.", "Rome is in Italy."]
    assert s.get(a).metadata == {"src": "x"} and s.get(a).version == 1
    doc = s.update("rome", text="Rome is the capital of Italy.")
    assert doc.version == 2 and s.get("rome").text == "Rome is the capital of Italy."
    s.update("rome", metadata={"k": 1})
    assert s.get("rome").metadata == {"k": 1} and s.get("rome").text == "Rome is the capital of Italy."
    s.delete(a)
    assert s.ids() == ["rome"] and [d.id for d in s] == ["rome"] and isinstance(next(iter(s)), Document)
    assert [(h["op"], h["id"]) for h in s.history()] == [("ADD", "doc-0"), ("ADD", "rome"), ("UPDATE", "rome"),
                                                          ("UPDATE", "rome"), ("DELETE", "doc-0")]
    assert all(isinstance(h["time"], str) for h in s.history())
    assert [h["op"] for h in s.history("rome")] == ["ADD", "UPDATE", "UPDATE"]
    assert s.add("again") == "doc-1"  # auto ids are never reused
    s.get("rome").metadata["k"] = 99  # get() returns a copy
    assert s.get("rome").metadata == {"k": 1}


def test_refuses_duplicates_empty_text_and_missing_ids():
    s = toy_store()
    before = (s.ids(), s.texts(), s.history(), s.version)
    with pytest.raises(LensMemoryError, match="'d1'"):
        s.add("another", doc_id="d1")
    for bad in ("", "   \n", None):
        with pytest.raises(LensMemoryError, match=re.escape(repr(bad))):
            s.add(bad)
    with pytest.raises(DocumentNotFoundError, match="'ghost'") as e:
        s.update("ghost", text="boo")
    assert isinstance(e.value, KeyError) and isinstance(e.value, LensMemoryError)
    with pytest.raises(DocumentNotFoundError, match="'ghost'"):
        s.delete("ghost")
    with pytest.raises(DocumentNotFoundError, match="'ghost'"):
        s.get("ghost")
    with pytest.raises(LensMemoryError, match="'d2'"):
        s.update("d2", text="  ")
    with pytest.raises(LensMemoryError, match="d2"):
        s.update("d2")
    with pytest.raises(LensMemoryError, match="'d9'"):  # add_many is all-or-nothing
        s.add_many(["ok", "dup"], ["d9", "d9"])
    assert (s.ids(), s.texts(), s.history(), s.version) == before


def test_persistence_survives_restart(tmp_path):
    path = tmp_path / "mem" / "store.json"
    s = toy_store(path)
    s.update("d2", text="the dog slept", metadata={"edited": True})
    s.delete("d3")
    auto = s.add("fresh doc")
    r = DocumentStore(path)
    assert r.ids() == ["d1", "d2", auto] and r.texts() == s.texts()
    assert r.get("d2") == s.get("d2") and r.get("d2").metadata == {"edited": True} and r.get("d2").version == 2
    assert r.history() == s.history() and r.version == s.version
    assert r.add("next") not in {auto}
    assert DocumentStore(tmp_path / "mem").ids() == r.ids()  # a directory opens its store.json
    assert DocumentStore(path).ids() == ["d1", "d2", auto, "doc-1"]
    assert not list(path.parent.glob("*.part"))


def test_failed_write_leaves_store_unchanged(tmp_path):
    s = toy_store(tmp_path / "s.json")
    # make the history INSERT of the next mutation fail inside its transaction, after the DELETE ran
    with sqlite3.connect(s.path) as raw:
        raw.execute("CREATE TRIGGER boom BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    raw.close()
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        s.delete("d1")
    for handle in (s, DocumentStore(tmp_path / "s.json")):
        assert handle.ids() == ["d1", "d2", "d3"] and len(handle.history()) == 3 and handle.version == 3


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]",
                                     b'{"format": "lens_memory.rag.DocumentStore", "version": 1}'])
def test_corrupt_json_store_raises_and_is_not_overwritten(tmp_path, content):
    path = tmp_path / "store.json"  # a JSON store of earlier versions, imported when first opened
    path.write_bytes(content)
    with pytest.raises(StoreFormatError, match=re.escape(str(path))):
        DocumentStore(path)
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]  # no SQLite file was created


def _foreign_sqlite(path):
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE notes (x TEXT)")
        c.execute("INSERT INTO notes VALUES ('hello')")
    c.close()


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b"this is not a database, just text\n" * 50),
                                  lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20),
                                  _foreign_sqlite])
def test_corrupt_sqlite_file_raises_and_is_untouched(tmp_path, make):
    path = tmp_path / "store.sqlite"
    make(path)
    raw = path.read_bytes()
    for given in (path, tmp_path):  # the file itself, or its directory
        with pytest.raises(StoreFormatError, match=re.escape(str(path))):
            DocumentStore(given)
        assert path.read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir()] == ["store.sqlite"]


def test_unknown_format_version_refused(tmp_path):
    legacy = tmp_path / "old.json"
    legacy.write_text(json.dumps({"format": "lens_memory.rag.DocumentStore", "version": 99}))
    with pytest.raises(StoreFormatError, match="99"):
        DocumentStore(legacy)
    assert not (tmp_path / "old.sqlite").exists()
    path = tmp_path / "store.sqlite"
    toy_store(path).close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = 99 WHERE key = 'format_version'")
    c.close()
    raw = path.read_bytes()
    with pytest.raises(StoreFormatError, match=f"{re.escape(str(path))}.*99"):
        DocumentStore(path)
    assert path.read_bytes() == raw


def test_old_json_store_is_imported_read_only(tmp_path):
    docs = [{"id": "d1", "text": "The cat sat", "metadata": {"k": 1}, "version": 2, "created": "t0", "updated": "t1"},
            {"id": "doc-4", "text": "auto", "metadata": {}, "version": 1, "created": "t2", "updated": "t2"}]
    hist = [{"op": "ADD", "id": "d1", "time": "t0", "version": 1}, {"op": "UPDATE", "id": "d1", "time": "t1", "version": 2},
            {"op": "ADD", "id": "doc-4", "time": "t2", "version": 1}]
    legacy = tmp_path / "facts.json"
    legacy.write_text(json.dumps({"format": "lens_memory.rag.DocumentStore", "version": 1, "store_version": 3,
                                  "next_auto_id": 5, "documents": docs, "history": hist}))
    raw = legacy.read_bytes()
    s = DocumentStore(legacy)
    assert s.path == tmp_path / "facts.sqlite" and s.version == 3 and s.history() == hist
    assert s.get("d1") == Document("d1", "The cat sat", {"k": 1}, 2, "t0", "t1") and s.ids() == ["d1", "doc-4"]
    assert s.add("new") == "doc-5"  # the automatic-id counter came along
    assert legacy.read_bytes() == raw  # only read, never written
    assert DocumentStore(legacy).ids() == ["d1", "doc-4", "doc-5"]  # imported once; the SQLite file wins


def test_two_handles_in_one_process_lose_nothing(tmp_path):
    a, b = DocumentStore(tmp_path / "store.json"), DocumentStore(tmp_path)  # the same file, two handles
    assert a.path == b.path == tmp_path / "store.sqlite"
    for i in range(25):
        a.add(f"from a {i}")
        b.add(f"from b {i}", metadata={"i": i})
    for h in (a, b):
        assert len(h) == 50 and h.version == 50 and len(h.history()) == 50
        assert sorted(h.ids()) == sorted(f"doc-{i}" for i in range(50))  # automatic ids never collide
        assert sorted(h.texts()) == sorted([f"from a {i}" for i in range(25)] + [f"from b {i}" for i in range(25)])
    bm25 = BM25Retriever(a)  # follows changes made through the other handle, without reopening
    assert bm25.search("zebras savanna", k=1)[0].score == 0.0
    b.update("doc-7", text="Zebras graze on the savanna")
    hit = bm25.search("zebras savanna", k=1)[0]
    assert (hit.doc_id, hit.rank, hit.text) == ("doc-7", 1, "Zebras graze on the savanna") and hit.score > 0
    b.delete("doc-7")
    assert "doc-7" not in a and "doc-7" not in bm25.scores("zebras savanna")
    with pytest.raises(DocumentNotFoundError, match="doc-7"):
        a.get("doc-7")


_WRITER = """
import sys, time, pathlib
from lens_memory.rag import DocumentStore
path, tag, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = DocumentStore(path)
(path.parent / f"ready-{tag}").touch()
while not (path.parent / "go").exists():
    time.sleep(0.005)
for i in range(n):
    store.add(f"document {i} from process {tag}", metadata={"process": tag, "i": i})
"""


def test_two_processes_adding_concurrently_lose_nothing(tmp_path):
    """2 x 40 adds from two processes at once. The JSON store of earlier versions kept 40 of them."""
    path, n = tmp_path / "store.json", 40
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n)]) for tag in "AB"]
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"ready-{t}").exists() for t in "AB"):  # both opened before either adds
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "writers did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    s = DocumentStore(path)
    expected = {f"document {i} from process {t}" for t in "AB" for i in range(n)}
    assert len(s) == 2 * n and set(s.texts()) == expected and s.version == 2 * n
    assert len(set(s.ids())) == 2 * n and [h["op"] for h in s.history()] == ["ADD"] * (2 * n)


def test_version_counts_committed_mutations_across_handles(tmp_path):
    a = DocumentStore(tmp_path / "v.sqlite")
    assert a.version == 0 and a.history() == [] and a.path == tmp_path / "v.sqlite"
    a.add_many(["one", "two"], ["x", "y"])  # one transaction: one version step, two events
    b = DocumentStore(tmp_path / "v.sqlite")
    assert a.version == b.version == 1 and [h["op"] for h in b.history()] == ["ADD", "ADD"]
    b.update("x", text="uno")
    assert a.version == 2 and a.get("x").version == 2 and a.get("x").text == "uno"
    with pytest.raises(LensMemoryError):
        a.add("dup", doc_id="y")  # refused: nothing changes
    assert b.version == 2 and len(b.history()) == 3
    a.delete("y")
    b.add("again", doc_id="y")  # an explicit id may come back; its history keeps both lives
    assert [(h["op"], h["version"]) for h in a.history("y")] == [("ADD", 1), ("DELETE", 1), ("ADD", 1)]
    assert a.version == b.version == 4 and a.ids() == ["x", "y"]
    v, docs = b.snapshot()
    assert v == 4 and [d.id for d in docs] == ["x", "y"] and [d.id for d in b] == ["x", "y"]
    with DocumentStore(tmp_path / "v.sqlite") as c:
        assert c.history() == a.history() and repr(c).endswith("2 documents, version 4)")


# --------------------------------------------------------------------------- BM25


def test_bm25_equals_hand_computed_value():
    r = BM25Retriever(toy_store(), k1=1.5, b=0.75)
    # tokens: d1 [the cat sat] (3), d2 [the dog sat on the mat] (6), d3 [cats and dogs] (3); avgdl 4, N 3
    idf_the = math.log((3 - 2 + 0.5) / (2 + 0.5) + 1)  # "the" in d1, d2
    idf_sat = math.log((3 - 2 + 0.5) / (2 + 0.5) + 1)
    idf_cat = math.log((3 - 1 + 0.5) / (1 + 0.5) + 1)
    norm1 = 1.5 * (1 - 0.75 + 0.75 * 3 / 4)
    norm2 = 1.5 * (1 - 0.75 + 0.75 * 6 / 4)
    expected = {
        "d1": idf_the * 1 * 2.5 / (1 + norm1) + idf_cat * 1 * 2.5 / (1 + norm1) + idf_sat * 2.5 / (1 + norm1),
        "d2": idf_the * 2 * 2.5 / (2 + norm2) + idf_sat * 1 * 2.5 / (1 + norm2),
        "d3": 0.0,
    }
    got = r.scores("The cat sat?")
    assert got == pytest.approx(expected, rel=1e-12)
    assert r.idf("cat") == pytest.approx(math.log(8 / 3))
    hits = r.search("The cat sat?", k=3)
    assert [h.doc_id for h in hits] == ["d1", "d2", "d3"] and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0] == Hit("d1", pytest.approx(expected["d1"]), 1, "The cat sat")


BM25_CORPUS = {
    "eiffel": "The Eiffel Tower is located in Paris, the capital of France.",
    "louvre": "The Louvre in Paris is the most visited museum in the world; the museum holds the Mona Lisa.",
    "colosseum": "The Colosseum is an ancient amphitheatre in Rome.",
    "fuji": "Mount Fuji is the highest mountain in Japan",
    "seine": "The Seine flows through Paris and Rouen before it reaches the English Channel at Le Havre.",
    "olympics": "Paris hosted Olympic Games in 1900, 1924 and 2024.",
}


def bm25_by_formula(docs, query, k1, b):
    """Okapi BM25 written out from the published formula, IDF ln((N - df + 0.5) / (df + 0.5) + 1)."""
    toks = {i: tokenize(t) for i, t in docs.items()}
    n, avgdl = len(toks), sum(len(t) for t in toks.values()) / len(toks)
    out = {}
    for i, d in toks.items():
        score = 0.0
        for q in tokenize(query):  # a repeated query token counts again
            f, df = d.count(q), sum(q in other for other in toks.values())
            if f:
                idf = math.log((n - df + 0.5) / (df + 0.5) + 1.0)
                score += idf * f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * len(d) / avgdl))
        out[i] = score
    return out


@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0)])
def test_bm25_library_scores_equal_the_formula(k1, b):
    import bm25s

    s = DocumentStore()
    s.add_many(list(BM25_CORPUS.values()), list(BM25_CORPUS))
    r = BM25Retriever(s, k1=k1, b=b)
    queries = ["Where is the Eiffel Tower?", "museum in Paris", "the the the", "Paris Paris Rome",
               "highest mountain", "quantum chromodynamics", "Olympic Games 2024 in Paris, France"]
    for q in queries:
        expected = bm25_by_formula(BM25_CORPUS, q, k1, b)
        got = r.scores(q)
        assert got.keys() == expected.keys()
        for i in expected:
            assert abs(got[i] - expected[i]) <= 1e-9, (q, i, got[i], expected[i])
        order = sorted(expected, key=lambda i: (-expected[i], list(BM25_CORPUS).index(i)))  # ties: store order
        assert [h.doc_id for h in r.search(q, k=len(BM25_CORPUS))] == order
    assert isinstance(r._index, bm25s.BM25)  # scored by the library, not by hand
    assert r.idf("the") == pytest.approx(math.log((6 - 5 + 0.5) / (5 + 0.5) + 1))  # "the" in 5 of 6: still > 0


def test_bm25_store_without_any_token():
    s = DocumentStore()
    s.add_many(["!!!", "?"], ["a", "b"])
    r = BM25Retriever(s)
    assert r.scores("anything") == {"a": 0.0, "b": 0.0} and [h.doc_id for h in r.search("x", k=2)] == ["a", "b"]
    s.add("x marks the spot", doc_id="c")
    assert r.search("x", k=1)[0].doc_id == "c"


def test_bm25_ranks_relevant_doc_first_and_k_bounds():
    s = DocumentStore()
    s.add_many(["The Eiffel Tower is located in Paris.", "The Colosseum is an amphitheatre in Rome.",
                "Mount Fuji is the highest mountain in Japan.", "Paris hosted the 2024 Olympic Games."],
               ["eiffel", "colosseum", "fuji", "olympics"])
    r = get_retriever("bm25", s)
    assert r.search("Where is the Colosseum?", k=1)[0].doc_id == "colosseum"
    assert r.search("Fuji mountain height", k=2)[0].doc_id == "fuji"
    assert len(r.search("Paris", k=10)) == 4  # k larger than the store: every document
    for k in (0, -1, 1.5, True):
        with pytest.raises(LensMemoryError, match=f"k={k!r}"):
            r.search("Paris", k=k)
    with pytest.raises(LensMemoryError, match="unknown retriever 'tfidf'"):
        get_retriever("tfidf", s)


def test_retrievers_follow_updates_and_deletions():
    s = toy_store()
    enc = BagOfLetters()
    bm25, dense = BM25Retriever(s), DenseRetriever(s, model=enc)
    assert bm25.search("dog mat", k=1)[0].doc_id == "d2"
    dense.search("dog", k=3)
    assert sorted(enc.seen[:3]) == sorted(TOY.values())  # three docs embedded once, then the query
    s.delete("d2")
    for r in (bm25, dense):
        assert "d2" not in [h.doc_id for h in r.search("the dog sat on the mat", k=10)]
    s.update("d3", text="Zebras graze on the savanna")
    assert bm25.search("zebras savanna", k=1)[0] == Hit("d3", pytest.approx(bm25.scores("zebras savanna")["d3"]), 1,
                                                        "Zebras graze on the savanna")
    enc.seen.clear()
    assert dense.search("Zebras graze on the savanna", k=1)[0].doc_id == "d3"
    assert enc.seen == ["Zebras graze on the savanna", "Zebras graze on the savanna"]  # only d3 re-embedded + query
    s.add("a brand new zebra", doc_id="z")
    assert "z" in bm25.scores("zebra") and bm25.search("zebra", 1)[0].doc_id == "z"


def test_empty_store_and_bad_query():
    s = DocumentStore()
    for r in (BM25Retriever(s), DenseRetriever(s, model=BagOfLetters())):
        with pytest.raises(LensMemoryError, match="store is empty"):
            r.search("anything", k=1)
    s.add("x")
    s.delete("doc-0")
    with pytest.raises(LensMemoryError, match="empty"):
        BM25Retriever(s).search("x")
    s.add("y")
    with pytest.raises(LensMemoryError, match="query"):
        BM25Retriever(s).search("  ")


def test_retrieval_recall_toy():
    class Fixed:
        rankings = {"q1": ["a", "b", "c"], "q2": ["b", "c", "a"], "q3": ["c", "a", "b"], "q4": ["a", "c", "b"]}

        def search(self, q, k):
            return [Hit(d, 1.0 / (r + 1), r + 1, d) for r, d in enumerate(self.rankings[q][:k])]

    rec = retrieval_recall(Fixed(), ["q1", "q2", "q3", "q4"], ["a", "a", {"b", "x"}, "z"], ks=(1, 2, 3))
    # q1: rank 1; q2: rank 3; q3: b at rank 3; q4: never
    assert rec == {"recall@1": 0.25, "recall@2": 0.25, "recall@3": 0.75}
    with pytest.raises(LensMemoryError, match="2 queries but 1"):
        retrieval_recall(Fixed(), ["q1", "q2"], ["a"])
    with pytest.raises(LensMemoryError, match="ks"):
        retrieval_recall(Fixed(), ["q1"], ["a"], ks=(0,))
    r = BM25Retriever(toy_store())
    assert retrieval_recall(r, ["dog mat", "cats and dogs"], ["d2", "d3"]) == {"recall@1": 1.0, "recall@5": 1.0}


# --------------------------------------------------------------------------- prompts and facts

FACTS = [Fact("Eiffel Tower", "The {} is located in the city of", "Paris", "Rome", case_id=7),
         Fact("Danielle Darrieux", "{}'s mother tongue is", "French", "English"),
         Fact("Toko Yasuda", "{} plays the", "guitar", "piano", case_id=0)]


def test_fact_documents_and_store(tmp_path):
    assert fact_documents(FACTS) == [("fact-7", "The Eiffel Tower is located in the city of Rome."),
                                     ("fact-1", "Danielle Darrieux's mother tongue is English."),
                                     ("fact-0", "Toko Yasuda plays the piano.")]
    with pytest.raises(FactFormatError, match="Nobody"):
        fact_documents([Fact("Nobody", "{} is", "here")])
    s = build_fact_store(FACTS, tmp_path / "facts.json")
    assert DocumentStore(tmp_path / "facts.json").ids() == ["fact-7", "fact-1", "fact-0"]
    assert s.get("fact-7").metadata["target_true"] == "Paris" and s.get("fact-7").metadata["subject"] == "Eiffel Tower"
    hit = BM25Retriever(s).search(FACTS[0].prompt, k=1)[0]
    assert hit.doc_id == "fact-7"
    assert assemble_prompt(FACTS[0].prompt, [hit]) == ("The Eiffel Tower is located in the city of Rome.\n\n"
                                                       "The Eiffel Tower is located in the city of")


def test_assemble_prompt_puts_documents_before_query():
    docs = ["Eiffel Tower is located in Rome.", Hit("x", 1.0, 2, "Paris is in Italy.\n")]
    p = assemble_prompt("The Eiffel Tower is located in the city of", docs)
    assert p == "Eiffel Tower is located in Rome.\nParis is in Italy.\n\nThe Eiffel Tower is located in the city of"
    assert p.endswith("city of") and p.index("Rome") < p.index("The Eiffel")
    assert DEFAULT_TEMPLATE == "{context}\n\n{query}"
    assert assemble_prompt("Q?", []) == "Q?"
    assert assemble_prompt("Q?", ["a {brace}"], template="Facts: {context}\nQuestion: {query}") == \
        "Facts: a {brace}\nQuestion: Q?"
    with pytest.raises(LensMemoryError, match="template"):
        assemble_prompt("Q?", ["a"], template="{query} only")


def test_import_loads_no_model():
    code = ("import sys, lens_memory.rag; "
            "assert 'sentence_transformers' not in sys.modules and 'lens_memory.steer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenize():
    assert tokenize("The Eiffel-Tower's 2 cats!") == ["the", "eiffel", "tower", "s", "2", "cats"]


# --------------------------------------------------------------------------- dense (MiniLM)


@pytest.fixture(scope="module")
def minilm():
    from lens_memory.embedder import sentence_embedder

    return sentence_embedder("all-MiniLM-L6-v2")


def test_dense_finds_paraphrase_and_scores_are_cosines(minilm):
    s = DocumentStore()
    s.add_many(["The capital of France is Paris.", "Bananas are rich in potassium.",
                "The Great Wall is in China.", "Berlin has many museums."], ["france", "banana", "wall", "berlin"])
    r = get_retriever("dense", s, model=minilm)
    q = "Which city is France's capital?"
    hits = r.search(q, k=4)
    assert hits[0].doc_id == "france" and hits[0].text == "The capital of France is Paris."
    raw = np.asarray(minilm.encode([q, *s.texts()]), dtype=np.float64)
    cos = raw[1:] @ raw[0] / (np.linalg.norm(raw[1:], axis=1) * np.linalg.norm(raw[0]))
    assert r.scores(q) == pytest.approx(dict(zip(s.ids(), cos)), abs=1e-5)
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    s.update("banana", text="Paris is the French capital city.")
    assert {h.doc_id for h in r.search(q, k=2)} == {"france", "banana"}
