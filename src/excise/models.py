"""Load and save models: the bundled aliases (:mod:`excise.bundled`), local folders, ``.gguf``
files, hub ids.

Weights are read from safetensors (GGUF is a tensor format, not a pickle). A folder with only
``.bin`` (pickle) weights is refused unless the caller passes ``allow_pickle=True``, and even then
it is read with ``torch.load(weights_only=True)``, the restricted unpickler that builds tensors and
nothing else. ``trust_remote_code`` stays off unless the caller asks for it. GGUF models are de-quantized once
into a safetensors cache under ``$EXCISE_HOME`` (default ``~/.cache/excise``), so later loads take
about a second instead of ~15 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import logging as hf_logging

from excise import sidememory
from excise.bundled import BUNDLED, bundled_gguf
from excise.errors import ExciseError, ModelError
from excise.fsutil import check_safetensors, exists

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger("excise")


def excise_home() -> Path:
    return Path(os.environ.get("EXCISE_HOME", Path.home() / ".cache" / "excise"))


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


def _pickle_files(folder: Path) -> list[Path]:
    """The ``.bin`` weight files of a folder: one file, or the shards its index names."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            shards = sorted(
                {str(name) for name in json.loads(index.read_text())["weight_map"].values()}
            )
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise ModelError(
                f"{index} is damaged (expected {{'weight_map': {{tensor: file}}}}); replace it"
            ) from None
        return [folder / name for name in shards]
    single = folder / "pytorch_model.bin"
    return [single] if single.is_file() else []


def _load_pickled(folder: Path, config, dtype: torch.dtype) -> PreTrainedModel:
    """Build the model from its config and fill it from ``.bin`` files with the safe unpickler."""
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    state: dict[str, torch.Tensor] = {}
    for file in _pickle_files(folder):
        try:
            # weights_only: only tensors and plain containers; any other object is refused
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as error:  # UnpicklingError and friends: refused or broken file
            raise ModelError(
                f"{file} was refused by torch.load(weights_only=True) ({_first_line(error)}); "
                "it holds more than tensors: convert it to safetensors from a trusted environment"
            ) from None
    result = model.load_state_dict(state, strict=False)
    params = model.state_dict()
    loaded = {params[k].data_ptr() for k in state if k in params}
    # a tied weight (lm_head = embeddings) is loaded when the tensor it shares is
    missing = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{folder}: the .bin weights do not match the config "
            f"(missing {len(missing)}, unexpected {len(result.unexpected_keys)} tensors, "
            f"e.g. {(missing or result.unexpected_keys)[0]}); check the folder"
        )
    return model


def resolve(spec: str, *, allow_pickle: bool = False) -> str:
    """Turn a model spec into something ``from_pretrained`` takes: a folder or a hub id.

    A folder must hold ``config.json`` and safetensors weights (or, with ``allow_pickle``,
    ``.bin`` weights).
    """
    if spec in BUNDLED:
        spec = str(bundled_gguf(spec, excise_home()))
    path = Path(spec).expanduser()
    present = exists(path)  # False also for a name too long to look up
    if spec.endswith(".gguf"):
        if not present or not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelError(f"{spec} is not a GGUF file (no GGUF magic); give a .gguf model")
        cache = _gguf_cache_dir(path)
        if not (cache / "config.json").is_file():
            _convert_gguf(path, cache)
        return str(cache)
    if present:
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"{spec} is not a Hugging Face model folder (no config.json)")
        if not any(path.glob("*.safetensors")):
            if not _pickle_files(path):
                raise ModelError(
                    f"{spec} has no weights (no .safetensors file); save the model into it with "
                    "save_pretrained(folder, safe_serialization=True)"
                )
            if not allow_pickle:
                raise ModelError(
                    f"{spec} has only .bin (pickle) weights and no .safetensors; convert it to "
                    "safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
                )
        for weights in sorted(path.glob("*.safetensors")):  # truncated copies fail here, fast
            try:
                check_safetensors(weights, "model file")
            except ExciseError as error:
                raise ModelError(str(error)) from None
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec[:1]
    if looks_like_path or "/" not in spec:
        known = ", ".join(BUNDLED)
        raise ModelError(
            f"model not found: {spec!r} (not a folder, .gguf file or hub id; bundled: {known})"
        )
    return spec  # a hub id


def default_device() -> str:
    """``cuda:LOCAL_RANK`` when a GPU is visible (one per process under ``accelerate launch``),
    else ``cpu``. ``CUDA_VISIBLE_DEVICES=""`` keeps every command on the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str | None = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[PreTrainedModel, object]:
    """Load a causal LM and its tokenizer in eval mode, with a pad token set.

    ``spec`` is a bundled alias (``smollm2-135m``, ``gemma3-270m``), a local HF folder, a
    ``.gguf`` file or a hub id.
    A tokenizer without a pad token gets its end-of-sequence token as pad. ``device="auto"``
    places the model on this process's GPU when one is visible (:func:`default_device`), where
    training would move it anyway; ``None`` leaves it on the CPU.
    """
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    source = resolve(spec, allow_pickle=allow_pickle)
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()  # off in a log or with --quiet: stays off
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        except OSError:
            raise
        except Exception as error:  # a damaged config.json: transformers and huggingface_hub
            # raise ValueError, TypeError and their own validation errors for it
            if "trust_remote_code" in str(error):
                raise ModelError(
                    f"{spec} needs its own Python code to load; pass --trust-remote-code only if "
                    "you trust its author (the code runs on this machine)"
                ) from None
            raise ModelError(f"cannot read the config of {spec}: {_first_line(error)}") from None
        _check_causal(spec, config)
        folder = Path(source)
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ModelError(
                f"{spec} has no tokenizer files; save the tokenizer into it with "
                "tokenizer.save_pretrained(folder)"
            )
        pickled = Path(source).is_dir() and not any(Path(source).glob("*.safetensors"))
        if pickled:  # only reached with allow_pickle (resolve refuses otherwise)
            model = _load_pickled(Path(source), config, DTYPES[dtype])
        else:
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
                        f"{spec} is not a causal language model ({config.model_type}); "
                        "excise needs a decoder-only model such as Llama, Qwen or GPT-2"
                    ) from error
                raise ModelError(f"cannot load model {spec!r}: {_first_line(error)}") from None
            except (RuntimeError, KeyError, TypeError) as error:  # weights that do not fit config
                raise ModelError(f"cannot load model {spec!r}: {_first_line(error)}") from None
        try:
            tokenizer = _read_tokenizer(source, trust_remote_code)
        except OSError:
            raise
        except Exception as error:  # damaged tokenizer files: JSON, key and backend errors
            raise ModelError(
                f"cannot read the tokenizer of {spec}: {_first_line(error)[:120]}; its tokenizer "
                "files are damaged: save them again with tokenizer.save_pretrained(folder)"
            ) from None
    except OSError as error:
        raise ModelError(f"cannot load model {spec!r}: {_first_line(error)}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if spec in BUNDLED and not BUNDLED[spec].chat:
        tokenizer.chat_template = None  # a base model: "auto" picks raw prompts
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if Path(source).is_dir():
        sidememory.load(model, source)  # an edit kept as a side memory, if the folder has one
    if device == "auto":
        device = default_device()
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


# A folder whose tokenizer files are only these, with only these settings, is what transformers 5
# saves for a tokenizers-backed class; anything else goes through from_pretrained.
_PLAIN_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
_OTHER_FILES = {*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "merges.txt"}
_PLAIN_SETTINGS = {"model_max_length", "padding_side", "truncation_side", "chat_template"}
_PLAIN_SETTINGS |= {"add_bos_token", "add_eos_token", "clean_up_tokenization_spaces"}
_BOOKKEEPING = {"tokenizer_class", "backend", "is_local", "local_files_only"}


def _read_tokenizer(source: str, trust_remote_code: bool):
    """``AutoTokenizer.from_pretrained(source)``, built straight from ``tokenizer.json`` when the
    folder holds only what transformers 5 saves for a tokenizers-backed class.

    For a class with its own ``__init__`` (GemmaTokenizer, LlamaTokenizer...) from_pretrained
    parses tokenizer.json in Python twice and rebuilds the BPE from the parsed vocabulary and
    merges: for gemma3-270m (262k tokens, 515k merges) ~3 s of a ~3.5 s load. The class's
    ``__init__`` with ``tokenizer_file`` reads the file once, in Rust (~1.2 s): the same class,
    token ids, special tokens and saved files (tests/test_gemma.py compares them).
    """
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    folder = Path(source)
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    files = names & (_OTHER_FILES | _PLAIN_FILES)
    if {"tokenizer.json", "tokenizer_config.json"} <= files <= _PLAIN_FILES:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        cls = tokenizer_class_from_name(str(config.get("tokenizer_class")))
        settings = {k: v for k, v in config.items() if k not in _BOOKKEEPING}
        plain = all(
            k in _PLAIN_SETTINGS or (k.endswith("_token") and isinstance(v, str | None))
            for k, v in settings.items()
        )
        if plain and isinstance(cls, type) and issubclass(cls, TokenizersBackend):
            if "chat_template.jinja" in files:
                settings["chat_template"] = (folder / "chat_template.jinja").read_text()
            tokenizer_file = str(folder / "tokenizer.json")
            return cls(tokenizer_file=tokenizer_file, name_or_path=source, **settings)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_causal(spec: str, config) -> None:
    """Refuse encoders and encoder-decoders, which transformers may still wrap in a causal head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )
    if encoder or getattr(config, "is_encoder_decoder", False):
        kind = "an encoder-decoder" if config.is_encoder_decoder else "an encoder"
        raise ModelError(
            f"{spec} is not a causal language model ({config.model_type} is {kind}); "
            "excise needs a decoder-only model such as Llama, Qwen or GPT-2"
        )


def save_model(model: PreTrainedModel, tokenizer: object, out: str | os.PathLike) -> Path:
    """Write a standard HF checkpoint (safetensors) that plain ``from_pretrained`` loads; a
    model with a side memory (:mod:`excise.sidememory`) gets it in a file of its own, which
    ``from_pretrained`` does not read (:func:`load_model` does)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if (memory := sidememory.find(model)) is not None:  # the memory beside unedited weights
        sidememory.save_beside(model, memory, out)
    else:
        model.save_pretrained(out, safe_serialization=True)
    if bars:  # turning them on where excise.progress turned them off warns (huggingface_hub)
        hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    return out


def clone_model(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy with its own weights (for references and attacks); same dtype and device."""
    # its own config: changes to the copy's config (fold unties embeddings) stay on the copy
    config = deepcopy(model.config)
    copy = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    copy.load_state_dict(sidememory.base_state(model))
    sidememory.carry(model, copy)
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


def weights_sha256(model: PreTrainedModel) -> str:
    """sha256 of every weight, by name, shape and float32 value: the identity of a model's weights.

    Values are widened to float32 first, so a checkpoint hashes the same whatever dtype it is
    loaded in, as long as loading loses nothing (a bf16 checkpoint read as bf16 or float32).
    Tied weights are counted under each name.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}\n".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
