"""The evaluation harness: what any memory artifact does to a model, measured the same way for all.

An *artifact* is anything with ``apply(model)`` returning a context manager that changes the model and
restores it on exit -- a ROME/MEMIT weight edit, a steering vector, a KV memory, retrieved text in
context. Nothing here asks which kind it is. Three questions, one module each:

**Knowledge** (:mod:`.knowledge`: :class:`EvalConfig`, :func:`evaluate_edits`, :class:`EditEvaluation`)
-- did the model take up the new fact, and only it? CounterFact scores before and after applying the
artifacts, as ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") and MEMIT
(Meng et al. 2023, "Mass-Editing Memory in a Transformer") publish them; the definitions and their
sources are in :mod:`lens_memory.metrics`:

* ``{efficacy,paraphrase,neighborhood}_success`` -- ROME's ES / PS / NS: the fraction of the edit prompt,
  its paraphrases and prompts about *other* subjects with the same true object for which the new
  (efficacy, paraphrase) or the true (neighbourhood) object is the more probable one;
* ``..._magnitude`` -- ROME's / MEMIT's EM / PM / NM, the probability difference, with the probability
  of a multi-token target ``P = exp(-mean token NLL)`` (mean, not sum, over its tokens);
* ``..._accuracy`` -- EasyEdit's (Wang et al. 2024) teacher-forced top-1 token accuracy;
* ``score_s`` -- ROME's S, the harmonic mean of the ES, PS, NS means;
* ``fluency_ngram_entropy`` -- ROME's generation entropy GE of prompt + generation (ROME generates 100
  tokens in all; shorter texts score lower, so compare such rows with each other, not with published GE);
* ``consistency_model_text_tfidf`` -- *not* ROME's RS: the TF-IDF cosine between text generated about the
  edited subject and the unedited model's own text about subjects that truly have the new object.

Artifacts are applied per fact (artifact ``i`` alone for fact ``i``: ROME's evaluation) or all together
(MEMIT's batch edit, sequential edits; neighbourhood prompts about subjects edited in the same batch are
left out). Means over facts come with 95% intervals (Wilson for success rates whose per-fact values are all 0 or 1,
a seeded BCa bootstrap otherwise: :func:`lens_memory.metrics.mean_ci`) and the number of facts behind
them.

**Cost** (:mod:`.cost`: :func:`measure_cost`, :func:`artifact_nbytes`) -- what the artifact costs at
inference: prefill milliseconds (a forward pass over the prompt producing the first token), decode
milliseconds per further token (cached greedy generation) and the context tokens the model reads, all
with the artifact applied, the milliseconds ``apply`` takes, and the bytes the artifact stores
(``nbytes()``, or the tensors it holds).

**Reversibility** (:mod:`.reversibility`: :func:`reversibility`) -- does the model come back? Logits of
probe prompts before applying and after leaving the ``with`` block, normally and after an exception
raised inside it: the largest absolute difference (``0.0`` means bit-exact), and how much the probes'
next-token logits moved while the artifact was applied.

:func:`lens_memory.compare.compare_mechanisms` runs all three for named sets of artifacts and puts one
row per mechanism in a table; :mod:`.rows` (:func:`knowledge_rows`, :func:`cost_rows`) builds the knowledge
and cost parts of such rows, for it and for ``lens-memory memory``
(:func:`~lens_memory.workflows.memory.run_memory`).

The harness sits below the mechanisms: it imports none of them (:mod:`lens_memory.edit`,
:mod:`lens_memory.memory`, ...), and they may import it.
"""

from .cost import artifact_nbytes, measure_cost
from .knowledge import GENERATION_METRICS, METRICS, EditEvaluation, EvalConfig, evaluate_edits, unedited_neighbours
from .reversibility import reversibility
from .rows import KnowledgeRows, cost_rows, knowledge_rows

__all__ = ["EvalConfig", "EditEvaluation", "evaluate_edits", "unedited_neighbours", "METRICS", "GENERATION_METRICS", "measure_cost",
           "artifact_nbytes", "reversibility", "KnowledgeRows", "knowledge_rows", "cost_rows"]
