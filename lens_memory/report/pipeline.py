"""``lens-memory report``: every memory mechanism on the same facts, in one HTML (and Markdown) report.

Stages (each cached and resumable, see :mod:`lens_memory.report.stages`; keyed by
:func:`stage_key_config`: the stage's settings plus the SHA-256 of the facts and the model's
weight and tokenizer hashes):

1. ``facts`` -- counterfactual facts the model knows (spread over relations);
2. ``trace`` -- causal tracing of a few of them (Meng et al. 2022); the MLP peak picks the edit layers;
3. ``rome`` / ``memit`` -- weight edits of every fact at the traced layers (key statistics cached);
4. ``memory`` -- the facts' reference sentences as RAG documents, dense and sparse Memory3 KV
   memories: exactness, retrieval recall, attention to memory, bytes (knowledge is left to ``compare``);
5. ``fact_vectors`` -- the same references as in-context steering vectors (activations);
6. ``compare`` -- one harness (:func:`~lens_memory.compare.compare_mechanisms`) scores every
   artifact on the same facts: efficacy, paraphrase, neighbourhood, fluency, time, bytes, reversibility;
7. ``steer_caa`` / ``steer_sta`` / ``steer_lmsteer`` -- behaviour steering with its trade-off curves; only when
   asked for, ``lifelong`` -- sequential MEMIT and AlphaEdit with health curves (:mod:`.lifelong`);
8. the report: taxonomy figure, every stage's figures and tables, provenance; ``summary.json``
   with the seconds of each stage and the headline table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LensMemoryError
from ..io import read_json, write_json
from .lifelong import stage_lifelong
from .stages import StageRunner

__all__ = ["ReportConfig", "run_report", "STAGES", "OPTIONAL_STAGES", "stage_key_config", "report_inputs", "facts_sha256",
           "tokenizer_sha256"]

log = logging.getLogger(__name__)

STAGES = ("facts", "trace", "rome", "memit", "memory", "fact_vectors", "compare", "steer_caa", "steer_sta",
          "steer_lmsteer")
#: stages the report cannot be rendered without (the steering ones are optional sections)
REQUIRED = STAGES[:7]
#: stages run only when asked for (``--stages ...,lifelong``)
OPTIONAL_STAGES = ("lifelong",)


@dataclass(frozen=True)
class ReportConfig:
    """Sizes of every stage. :meth:`quick` is the short run (``--quick``)."""

    model: str = "gemma-3-270m"
    device: str = "cpu"
    dtype: str = "float32"
    facts: str = "builtin"
    n_facts: int = 16
    known_only: bool = True
    trace_facts: int = 3
    trace_kinds: tuple[str, ...] = ("hidden", "mlp", "attn")
    trace_samples: int = 10
    memit_width: int = 5
    top_k: int = 8
    memory_sweep: bool = True
    n_attention: int = 8
    behavior: str = "sentiment"
    steer_prompts: int = 20
    steer_tokens: int = 20
    steer_strengths: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "caa": (-2.0, -1.0, 0.0, 1.0, 2.0), "sta": (-2.0, -1.0, 0.0, 1.0, 2.0),
        "lmsteer": (-1.0, -0.5, 0.0, 0.5, 1.0)})
    quick_training: bool = False
    fluency_facts: int = 5
    gen_tokens: int = 30
    cost_facts: int = 3
    lifelong_methods: tuple[str, ...] = ("memit", "alphaedit")
    lifelong_batch_size: int = 4
    lifelong_batches: int = 3
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        from ..devices import resolve_dtype

        resolve_dtype(self.dtype)  # a clear error for an unknown dtype, before any stage runs
        for name in ("n_facts", "trace_facts", "trace_samples", "memit_width", "top_k", "steer_prompts",
                     "steer_tokens", "gen_tokens", "lifelong_batch_size", "lifelong_batches"):
            if getattr(self, name) < 1:
                raise LensMemoryError(f"ReportConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if "mlp" not in self.trace_kinds:
            raise LensMemoryError(f"trace_kinds must include 'mlp' (it picks the edit layers), got {self.trace_kinds}")
        from ..edit.sequence import SEQUENTIAL_METHODS
        if not self.lifelong_methods or set(self.lifelong_methods) - set(SEQUENTIAL_METHODS):
            raise LensMemoryError(f"lifelong_methods must be some of {SEQUENTIAL_METHODS}, got {self.lifelong_methods!r}")
        missing = {"caa", "sta", "lmsteer"} - set(self.steer_strengths)
        if missing:
            raise LensMemoryError(f"steer_strengths lacks {sorted(missing)}")

    @classmethod
    def quick_config(cls, **overrides: Any) -> "ReportConfig":
        base = dict(n_facts=4, trace_facts=2, trace_kinds=("mlp",), trace_samples=5, memory_sweep=False,
                    n_attention=3, steer_prompts=6, steer_tokens=12,
                    steer_strengths={"caa": (-2.0, 0.0, 2.0), "sta": (-2.0, 0.0, 2.0), "lmsteer": (-1.0, 0.0, 1.0)},
                    quick_training=True, fluency_facts=2, gen_tokens=16, cost_facts=2, lifelong_batch_size=1,
                    lifelong_batches=2, quick=True)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The part of the config a stage depends on (its cache key), plus the stages it reads."""
        c = self.to_dict()
        common = {k: c[k] for k in ("model", "facts", "n_facts", "known_only", "seed")} | {"splits": "test/dev-v1"}
        if (self.device, self.dtype) != ("cpu", "float32"):  # the defaults stay out of the key: old caches stay valid
            common |= {"device": self.device, "dtype": self.dtype}
        own = {"facts": ("trace_facts",), "trace": ("trace_facts", "trace_kinds", "trace_samples"),
               "rome": ("trace_facts", "trace_kinds", "trace_samples"),
               "memit": ("trace_facts", "trace_kinds", "trace_samples", "memit_width"),
               "memory": ("top_k", "memory_sweep", "n_attention", "cost_facts"),
               "fact_vectors": (),
               "lifelong": ("trace_facts", "trace_kinds", "trace_samples", "memit_width", "lifelong_methods",
                            "lifelong_batch_size", "lifelong_batches"),
               "compare": ("trace_facts", "trace_kinds", "trace_samples", "memit_width", "top_k", "fluency_facts",
                           "gen_tokens", "cost_facts"),
               }.get(stage)
        if own is None:  # steering stages do not depend on the facts
            method = stage.split("_", 1)[1]
            return {"model": self.model, **{k: common[k] for k in ("device", "dtype") if k in common},
                    "behavior": self.behavior, "steer_prompts": self.steer_prompts,
                    "steer_tokens": self.steer_tokens, "strengths": list(self.steer_strengths[method]),
                    "quick_training": self.quick_training, "seed": self.seed, "eval_split": "test"}
        return {**common, **{k: c[k] for k in own}}


# -- cache keys: contents, not names --------------------------------------------------------------

def facts_sha256(source: str | Path) -> str:
    """SHA-256 of the facts a report reads: the file's bytes for a local file (or ``"heldout"``, the
    shipped file), else of the loaded records serialized (``"builtin"``, which is generated, or a URL)."""
    from importlib.resources import files

    from ..cache import content_key
    from ..io import sha256_file
    from ..facts import load_facts

    s = str(source)
    if s == "heldout":
        return sha256_file(str(files("lens_memory").joinpath("data/counterfact_heldout.json")))
    local = Path(s).expanduser()
    if s != "builtin" and not s.startswith(("http://", "https://")) and local.is_file():
        return sha256_file(local)
    return content_key([f.to_dict() for f in load_facts(source)], length=64)


def tokenizer_sha256(tokenizer: Any) -> str:
    """SHA-256 of what makes a tokenizer tokenize: its class, its full serialization (fast tokenizers;
    else the vocabulary) and its special tokens."""
    from ..cache import content_key

    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    special = getattr(tokenizer, "special_tokens_map", {})
    return content_key(type(tokenizer).__name__, body, special, length=64)


def report_inputs(cfg: ReportConfig, lm: Any) -> dict[str, Any]:
    """The contents every stage key includes: the facts' SHA-256 and the loaded model's weight and
    tokenizer hashes (:attr:`~lens_memory.models.ModelIdentity.weight_hash`)."""
    return {"facts_sha256": facts_sha256(cfg.facts),
            "model": {"weight_hash": lm.identity.weight_hash, "tokenizer_sha256": tokenizer_sha256(lm.tokenizer),
                      "prepend_bos": lm.identity.prepend_bos}}


def stage_key_config(cfg: ReportConfig, stage: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What stage ``stage`` is cached under: :meth:`ReportConfig.stage_config` plus the input contents
    (:func:`report_inputs`; the steering stages, which do not read the facts, get the model's only)."""
    own = {"model": inputs["model"]} if stage.startswith("steer_") else inputs
    return {**cfg.stage_config(stage), "inputs": own}


class _Model:
    """Loads the model on first use only, once.

    :func:`run_report` loads it up front even for a fully cached report: the stage keys include its
    weight and tokenizer hashes, so a model directory changed in place is not mistaken for the old one.
    """

    def __init__(self, name: str, device: str = "cpu", dtype: str = "float32"):
        self.name, self.device, self.dtype, self._lm = name, device, dtype, None

    def __call__(self):
        if self._lm is None:
            from ..models import load_model

            self._lm = load_model(self.name, device=self.device, dtype=self.dtype)
        return self._lm


def _facts(runner: StageRunner):
    from ..facts import facts_from_records

    return facts_from_records(read_json(runner.path("facts") / "facts.json"))


# -- stages ---------------------------------------------------------------------------------------

def _stage_facts(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
    """The reported facts (test split) and, separately, the dev-split facts that tracing picks layers on."""
    from ..facts import load_facts, sample_known_facts, spread_facts

    lm = model()
    picked = {}
    for split, n, name in (("test", cfg.n_facts, "facts.json"), ("dev", cfg.trace_facts, "dev_facts.json")):
        pool = load_facts(cfg.facts, split=split)
        if cfg.known_only:
            picked[split] = sample_known_facts(lm, pool, n)
        else:  # e.g. a random test model, which knows nothing
            picked[split] = [f for f in spread_facts(pool) if f.target_new][:n]
        write_json(d / name, [f.to_dict() for f in picked[split]])
    facts = picked["test"]
    return {"n_facts": len(facts), "split": "test", "n_dev_facts": len(picked["dev"]),
            "relations": sorted({f.relation_id for f in facts}), "model": lm.identity.to_dict()}


def _dev_facts(runner: StageRunner):
    from ..facts import facts_from_records

    return facts_from_records(read_json(runner.path("facts") / "dev_facts.json"))


def _stage_trace(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
    """Causal tracing of dev-split facts; its MLP peak and window are the edit layers of ROME and MEMIT."""
    from .. import viz
    from ..trace import plots as trace_plots
    from ..trace import TraceConfig, trace_facts

    lm = model()
    tcfg = TraceConfig(kinds=tuple(cfg.trace_kinds), n_samples=cfg.trace_samples, seed=cfg.seed + 1)
    res = trace_facts(lm, _dev_facts(runner)[:cfg.trace_facts], tcfg, only_known=False)
    res.save(d / "trace")
    viz.save_figure(res.plot(), d / "figures" / "aie")
    for kind in res.kinds:
        viz.save_figure(trace_plots.plot_trace_heatmap(res.traces[0], kind, window=res.window), d / "figures" / f"heatmap_{kind}")
    sug = res.suggest_layers(width=cfg.memit_width)
    return {**res.summary(), "suggested_layer": sug.layer, "suggested_layers": list(sug.layers),
            "split": "dev", "config": tcfg.to_dict()}


def _stage_edit(method: str):
    def stage(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
        from ..workflows import fit_edits

        lm = model()
        facts = _facts(runner)
        tr = runner.records["trace"].summary
        layers = [tr["suggested_layer"]] if method == "rome" else list(tr["suggested_layers"])
        run = fit_edits(lm, facts, method, layers, seed=cfg.seed)
        run.save(d)
        return {**run.summary(), "fit_seconds": run.seconds["stats"] + run.seconds["edit"], "n_edits": len(facts)}
    return stage


def _stage_memory(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
    from ..workflows.memory import run_memory

    return run_memory(model(), _facts(runner), d, top_k=cfg.top_k, n_attention=cfg.n_attention, n_cost=cfg.cost_facts,
                      fluency_facts=0, seed=cfg.seed, sweep=cfg.memory_sweep, knowledge=False)


def _stage_fact_vectors(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
    from ..rag import fact_documents
    from ..steer.fact_vector import FactVectorConfig, fact_vectors

    lm = model()
    facts = _facts(runner)
    t0 = time.time()
    vecs = fact_vectors(lm, facts, [t for _, t in fact_documents(facts)], FactVectorConfig())
    fit = time.time() - t0
    for i, v in enumerate(vecs):
        v.save(d / "vectors" / f"{i:03d}")
    return {"layer": vecs[0].layers[0], "fit_seconds": fit, "mean_norm": sum(v.norm() for v in vecs) / len(vecs)}


def load_mechanisms(runner: StageRunner, facts) -> list:
    """Every fact-memory artifact the earlier stages saved, as :class:`~lens_memory.compare.Mechanism` s."""
    from ..compare import Mechanism
    from ..edit import Edit
    from ..memory import MemoryBank
    from ..rag import ContextArtifact, fact_documents
    from ..steer.vector import SteeringVector

    docs = fact_documents(facts)
    ids = [i for i, _ in docs]
    rec = runner.records
    mech = []
    rome_dirs = sorted((runner.path("rome") / "edits").iterdir())
    mech.append(Mechanism("rome", [Edit.load(p) for p in rome_dirs], per_fact=True,
                          fit_seconds=rec["rome"].summary["fit_seconds"], info={"layers": rec["rome"].summary["layers"]}))
    mech.append(Mechanism("memit", [Edit.load(runner.path("memit") / "edits" / "000")], per_fact=False,
                          fit_seconds=rec["memit"].summary["fit_seconds"],
                          info={"layers": rec["memit"].summary["layers"]}))
    mem = rec["memory"].summary
    dense = MemoryBank.load(runner.path("memory") / "memory_dense")
    sparse = MemoryBank.load(runner.path("memory") / "memory_sparse")
    encode_s = mem["seconds"]["encode"]
    mech.append(Mechanism("kv_dense", [dense.subset([i]) for i in ids], fit_seconds=encode_s,
                          info={"layers": "all"}))
    mech.append(Mechanism("kv_sparse", [sparse.subset([i]) for i in ids], fit_seconds=encode_s,
                          info={"layers": "all", "top_k": sparse.config.top_k}))
    mech.append(Mechanism("rag", [ContextArtifact([t], ids=[i]) for i, t in docs], fit_seconds=0.0))
    vec_dirs = sorted((runner.path("fact_vectors") / "vectors").iterdir())
    mech.append(Mechanism("fact_vector", [SteeringVector.load(p) for p in vec_dirs],
                          fit_seconds=rec["fact_vectors"].summary["fit_seconds"],
                          info={"layers": [rec["fact_vectors"].summary["layer"]]}))
    return mech


def _stage_compare(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
    from .. import viz
    from ..compare import CompareConfig, compare_mechanisms

    lm = model()
    facts = _facts(runner)
    cmp = compare_mechanisms(lm, facts, load_mechanisms(runner, facts),
                             CompareConfig(fluency_facts=cfg.fluency_facts, gen_tokens=cfg.gen_tokens,
                                           cost_facts=cfg.cost_facts, seed=cfg.seed))
    cmp.save(d)
    cmp.to_dataframe().to_csv(d / "comparison.csv")
    viz.save_figure(cmp.plot(), d / "figures" / "comparison")
    return {"rows": cmp.rows}


def _stage_steer(method: str):
    def stage(model: _Model, cfg: ReportConfig, runner: StageRunner, d: Path) -> dict[str, Any]:
        from ..steer.evaluate import SteerEvalConfig
        from ..workflows.steer import run_steering

        ecfg = SteerEvalConfig(strengths=tuple(cfg.steer_strengths[method]), n_prompts=cfg.steer_prompts,
                               gen_tokens=cfg.steer_tokens, seed=cfg.seed, split="test")
        return run_steering(model(), method, cfg.behavior, d, eval_cfg=ecfg, baseline=(method == "caa"),
                            quick=cfg.quick_training)
    return stage


_STAGE_FNS = {"facts": _stage_facts, "trace": _stage_trace, "rome": _stage_edit("rome"), "memit": _stage_edit("memit"),
              "memory": _stage_memory, "fact_vectors": _stage_fact_vectors, "compare": _stage_compare,
              "steer_caa": _stage_steer("caa"), "steer_sta": _stage_steer("sta"),
              "steer_lmsteer": _stage_steer("lmsteer"),
              "lifelong": lambda model, cfg, runner, d: stage_lifelong(model(), cfg, _facts(runner), _dev_facts(runner),
                                                                       runner.records["trace"].summary, d)}


def run_report(out: str | Path, config: ReportConfig | None = None, *, force: bool = False,
               stages: tuple[str, ...] = STAGES, progress: bool = True, executor: Any = None) -> dict[str, Any]:
    """Run (or resume) every stage into ``out/stages`` and render ``out/report.html`` and ``out/report.md``.

    ``executor`` (:mod:`lens_memory.parallel`) runs the stages' long loops (tracing, ROME, evaluations,
    sweeps, key statistics); stage keys do not include it, so a stage computed on a cluster is reused here.
    """
    import contextlib

    from tqdm.auto import tqdm

    from ..parallel import using_executor

    from .build import build_report

    cfg = config or ReportConfig()
    unknown = [s for s in stages if s not in _STAGE_FNS]
    if unknown:
        raise LensMemoryError(f"unknown stage(s) {unknown}; stages are {list(STAGES + OPTIONAL_STAGES)}")
    out = Path(out)
    runner = StageRunner(out / "stages", force=force)
    model = _Model(cfg.model, cfg.device, cfg.dtype)
    t0 = time.time()
    inputs = report_inputs(cfg, model())  # loads the model: its hashes are part of every stage key
    bar = tqdm(list(stages), desc="report stages", unit="stage", disable=not progress)
    with using_executor(model(), executor) if executor is not None else contextlib.nullcontext():
        for name in bar:
            bar.set_postfix_str(name)
            runner.run(name, stage_key_config(cfg, name, inputs),
                       lambda d, name=name: _STAGE_FNS[name](model, cfg, runner, d))
    for name in STAGES + OPTIONAL_STAGES:  # stages not asked for this time: use their finished results if they match
        if name not in runner.records:
            rec = runner.done(name, stage_key_config(cfg, name, inputs))
            if rec is not None:
                runner.records[name] = rec
    missing = [n for n in REQUIRED if n not in runner.records]
    t_render = time.time()
    if missing:
        log.warning("no report rendered: stage(s) %s have not run with this config", missing)
        summary: dict[str, Any] = {"command": "report", "report": None, "missing_stages": missing}
    else:
        summary = build_report(out, runner, cfg)
    summary["seconds"] = {**runner.seconds(), "render": round(time.time() - t_render, 1)}
    summary["reused_stages"] = [n for n in stages if runner.records[n].reused]
    summary["wall_seconds"] = round(time.time() - t0, 1)
    write_json(out / "summary.json", summary)
    return summary
