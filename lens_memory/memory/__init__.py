"""Key-value memories (Memory3-style) attached to attention, and how they change attention.

Yang et al. (2024), "Memory3: Language Modeling with Explicit Memory". Modules: :mod:`.bank` (encode,
sparsify, save; the deviations from Memory3 and their measured effects), :mod:`.attach` (the reversible
attention hooks, positions), :mod:`.attention` (attention to memory vs context), :mod:`.evaluate`
(exactness, layer sweep), :mod:`.pipeline` (``lens-memory memory``). Knowledge and cost are measured by
:mod:`lens_memory.harness`, as for every other mechanism (``measure_cost`` is re-exported here).
"""

from ..harness import measure_cost
from .attention import AttentionComparison, AttentionProfile, attention_profile, compare_attention
from .bank import EmptyReferenceError, MemoryBank, MemoryConfig, encode_memory, kv_bytes_per_token, tokenizer_fingerprint
from .evaluate import MemoryLayerSweep, exactness_check, memory_layer_sweep

__all__ = ["MemoryBank", "MemoryConfig", "encode_memory", "kv_bytes_per_token", "tokenizer_fingerprint",
           "EmptyReferenceError", "AttentionComparison", "AttentionProfile", "attention_profile", "compare_attention",
           "exactness_check", "measure_cost", "memory_layer_sweep", "MemoryLayerSweep"]
