"""lens_memory: where and how language models keep memory.

Four ways of changing what a model "remembers", compared on the same facts:
weights (causal tracing, ROME/MEMIT), activations (steering vectors, SAE features),
the key-value cache (Memory3-style memories) and the context (RAG).

The public API is flat and imported lazily, so ``import lens_memory`` is cheap and has no side
effects::

    import lens_memory as lm
    model = lm.load_model("gemma-3-270m")
    result = lm.trace_facts(model, lm.builtin_facts()[:10])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "LensModel": "models", "ModelIdentity": "models", "available_models": "models",
    "Fact": "facts", "builtin_facts": "facts", "load_facts": "facts", "load_known_facts": "facts",
    "load_counterfact": "facts", "check_knowledge": "facts", "KnowledgeResult": "facts",
    "TraceConfig": "trace", "TraceResult": "trace", "FactTrace": "trace", "trace_fact": "trace", "trace_facts": "trace",
    "DecoderStack": "stack",
    "Edit": "edit", "rome": "edit", "memit": "edit", "RomeConfig": "edit", "MemitConfig": "edit",
    "StatsConfig": "edit", "KeyStats": "edit", "key_statistics": "edit", "applied": "artifacts", "Handle": "artifacts",
    "save_artifact": "artifacts", "load_artifact": "artifacts", "hook_name": "hooks", "fit_edits": "workflows",
    "evaluate_edits": "harness", "EditEvaluation": "harness", "EvalConfig": "harness", "measure_cost": "harness",
    "artifact_nbytes": "harness", "reversibility": "harness",
    "Corpus": "corpus", "load_corpus": "corpus", "generate": "generation", "spread_facts": "facts",
    "sample_known_facts": "facts", "compare_mechanisms": "compare", "Mechanism": "compare", "CompareConfig": "compare",
    "Comparison": "compare", "fact_vectors": "steer.fact_vector", "FactVectorConfig": "steer.fact_vector",
    "ReportConfig": "report.pipeline", "run_report": "report.pipeline",
    "caa": "steer", "CAAConfig": "steer", "sta": "steer", "STAConfig": "steer", "lm_steer": "steer",
    "LMSteerConfig": "steer", "SteeringVector": "steer", "load_behavior": "steer", "builtin_behaviors": "steer",
    "train_sae": "sae", "SAETrainConfig": "sae", "decompose": "steer", "evaluate_steering": "steer",
    "SteerEvalConfig": "steer", "caa_layer_sweep": "steer",
    "MemoryBank": "memory", "MemoryConfig": "memory", "encode_memory": "memory", "compare_attention": "memory",
    "attention_profile": "memory", "exactness_check": "memory",
    "DocumentStore": "rag", "get_retriever": "rag", "retrieval_recall": "rag", "assemble_prompt": "rag",
    "ContextArtifact": "rag", "build_fact_store": "rag", "fact_documents": "rag",
    "LensMemoryError": "errors", "ModelUnavailableError": "errors", "FactFormatError": "errors",
    "SubjectNotFoundError": "errors", "LayerOutOfRangeError": "errors", "NoKnownFactsError": "errors",
    "InputTooLongError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lens_memory' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
