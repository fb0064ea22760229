"""Key statistics: the second moment E[k k^T] of an MLP output projection's input over text.

ROME, MEMIT and AlphaEdit weigh an edit against what the layer must keep doing on ordinary text,
summarised by this matrix. It is computed once per (model, layer, corpus, size) in a single pass
over a text sample shipped with the package (or the user's corpus), cached on disk under
``$EXCISE_HOME/stats``, and can be exported to and imported from one safetensors file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from excise.arch import block_part, normalised_writes, run_until, write_norm
from excise.data.files import not_text
from excise.errors import DataError, ExciseError
from excise.progress import progress as progress_bar

SAMPLES = Path(__file__).parents[1] / "data" / "builtin" / "text_sample"
SAMPLE = SAMPLES / "sample.jsonl"  # general text (~100k tokens)
ENCYCLOPEDIC = SAMPLES / "encyclopedic.jsonl"  # one passage per encyclopedia topic (~50k tokens)
DEFAULT_TOKENS = 50_000  # half from each shipped sample; see bench/editing.py stats


@dataclass
class KeyStats:
    """Per layer: the uncentred second moment of keys (float64) and how many tokens made it."""

    moments: dict[int, torch.Tensor]
    tokens: int
    model: str  # fingerprint of the model the keys were read from
    corpus: str  # hash of the text used
    weighed: bool = False  # keys weighed by 1 / rms(W k) (a model with write norms: compute)

    def covariance(self, layer: int) -> torch.Tensor:
        if layer not in self.moments:
            raise ExciseError(
                f"key statistics have no layer {layer} (have {sorted(self.moments)}); "
                "recompute them for the layers you edit"
            )
        return self.moments[layer]


def read_corpus(path: str | Path | None) -> list[str]:
    """Texts from a .jsonl (``text`` field) or .txt (one passage per blank-line block) file.

    ``None`` is the shipped default: the general sample and the encyclopedic one, a passage of
    each in turn, so any token budget takes them in about equal parts. Entity-dense text
    matters: with the general sample alone, directions that keys at entity positions share are
    cheap to write along, and an edit of one subject spreads to others of its kind
    (bench/README.md)."""
    if path is None:
        general, encyclopedic = read_corpus(SAMPLE), read_corpus(ENCYCLOPEDIC)
        mixed = [t for pair in zip(general, encyclopedic, strict=False) for t in pair]
        longer = general if len(general) > len(encyclopedic) else encyclopedic
        return mixed + longer[len(mixed) // 2 :]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"statistics corpus not found: {path}")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (ValueError, RecursionError, KeyError, TypeError, IndexError):
                    text = None
                if not isinstance(text, str) or not_text(text) is not None:
                    raise DataError(f"{path}:{number}: expected a JSON object with a 'text' string")
                texts.append(text)
    else:
        texts = [block.strip() for block in raw.split("\n\n") if block.strip()]
    if not texts:
        raise DataError(f"statistics corpus {path} holds no text")
    return texts


def corpus_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@torch.no_grad()
def compute(
    model,
    tokenizer,
    layers: Sequence[int],
    *,
    texts: Sequence[str],
    tokens: int,
    seq_len: int = 128,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[int, torch.Tensor], int]:
    """One pass over ``texts`` (cut into ``seq_len`` windows) until ``tokens`` keys are read.

    Where the block normalises the MLP's output before the stream (Gemma 2/3, OLMo 2:
    :func:`excise.arch.write_norm`) each key k is weighed by 1 / rms(W k): the norm divides a
    change of the output by rms(y), so what the statistics must keep is the change relative to
    y, not its size. Unweighed, 30 MEMIT edits on gemma-3-270m moved the outputs of the words
    after the subject by 10-25% of themselves and no edit landed (docs/editing.md)."""
    windows: list[list[int]] = []
    budget = tokens
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len][:budget]
            if len(piece) > 1:
                windows.append(piece)
                budget -= len(piece)
            if budget <= 0:
                break
        if budget <= 0:
            break
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}

    def hook_for(layer: int):
        normed = write_norm(model, layer) is not None

        def post(_module, args, output):
            keys = args[0][mask_holder["m"]].float()
            if normed:  # a change of y = W k reaches the stream divided by rms(y): weigh by that
                keys = keys / output[mask_holder["m"]].float().pow(2).mean(-1, keepdim=True).sqrt()
            update = (keys.T @ keys).double()  # float32 product per batch, float64 running sum
            sums[layer] = update if layer not in sums else sums[layer] + update

        return post

    handles = [
        block_part(model, layer, "mlp_out").register_forward_hook(hook_for(layer))
        for layer in layers
    ]
    was_training = model.training
    model.eval()
    count = 0
    try:
        bar = progress_bar(
            total=sum(len(w) for w in windows),
            desc="key statistics",
            unit="tokens",
            enabled=progress,
        )
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            width = max(len(w) for w in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids, dtype=torch.bool)
            for row, window in enumerate(chunk):
                input_ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = True
            mask_holder["m"] = mask.to(device)
            run_until(  # blocks above the last edited layer are not needed
                model,
                max(layers),
                input_ids=input_ids.to(device),
                attention_mask=mask.long().to(device),
            )
            count += int(mask.sum())
            bar.update(int(mask.sum()))
        bar.close()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise DataError("the statistics corpus produced no tokens")
    return {layer: (sums[layer] / count).cpu() for layer in layers}, count


def _cache_dir(model_hash: str, corpus: str, tokens: int, weighed: bool) -> Path:
    from excise.models import excise_home

    # "-rms": keys weighed by 1 / rms(W k) (write norms); files cached before that carry no suffix
    return excise_home() / "stats" / model_hash / f"{corpus}-{tokens}{'-rms' if weighed else ''}"


def key_stats(
    model,
    tokenizer,
    layers: Sequence[int],
    *,
    tokens: int = DEFAULT_TOKENS,
    corpus: str | Path | None = None,
    model_hash: str | None = None,
    cache: bool = True,
    progress: bool = True,
) -> KeyStats:
    """Statistics for ``layers``, from the disk cache where present; missing layers are computed."""
    from excise.models import fingerprint

    if tokens < 1:
        raise ExciseError("statistics need at least one token (stats_tokens >= 1)")
    texts = read_corpus(corpus)
    digest = corpus_hash(texts)
    model_hash = model_hash or fingerprint(model)
    weighed = normalised_writes(model)
    folder = _cache_dir(model_hash, digest, tokens, weighed)
    moments: dict[int, torch.Tensor] = {}
    counted = 0
    for layer in layers:
        path = folder / f"layer{layer}.safetensors"
        if cache and path.is_file():
            with safe_open(str(path), "pt") as handle:
                moments[layer] = handle.get_tensor("moment")
                counted = int(handle.metadata()["tokens"])
    missing = [layer for layer in layers if layer not in moments]
    if missing:
        computed, counted = compute(
            model, tokenizer, missing, texts=texts, tokens=tokens, progress=progress
        )
        moments.update(computed)
        if cache:
            folder.mkdir(parents=True, exist_ok=True)
            for layer, moment in computed.items():
                tmp = folder / f".layer{layer}.tmp"
                save_file(
                    {"moment": moment.contiguous()}, str(tmp), metadata={"tokens": str(counted)}
                )
                tmp.replace(folder / f"layer{layer}.safetensors")
    return KeyStats(moments, counted, model_hash, digest, weighed)


def export_stats(stats: KeyStats, path: str | Path) -> None:
    """Write ``stats`` to ``path`` (the caller makes it atomic: :func:`excise.fsutil.atomic_file`);
    ``written_by`` marks the file as excise's, so ``--overwrite`` may replace it."""
    tensors = {f"layer{layer}": m.contiguous() for layer, m in stats.moments.items()}
    meta = {"tokens": str(stats.tokens), "model": stats.model, "corpus": stats.corpus}
    meta["weighed"] = "rms" if stats.weighed else "none"
    save_file(tensors, str(path), metadata=meta | {"written_by": "excise stats"})


def import_stats(path: str | Path, *, model_hash: str | None = None) -> KeyStats:
    """Read exported statistics; refuse them when they were made from a different model."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"statistics file not found: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            moments = {int(k.removeprefix("layer")): handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several types for a corrupt header
        raise DataError(f"{path} is not a statistics file written by `excise stats`") from error
    stats = KeyStats(
        moments,
        int(meta.get("tokens", 0)),
        meta.get("model", ""),
        meta.get("corpus", ""),
        meta.get("weighed") == "rms",
    )
    return check_stats_model(stats, path, model_hash) if model_hash else stats


def check_stats_model(
    stats: KeyStats, path: str | Path, model_hash: str, weighed: bool | None = None
) -> KeyStats:
    """Refuse statistics made from another model than the one with ``model_hash`` (a file that
    names no model is taken as it is), or weighed otherwise than that model's keys must be
    (``weighed``: whether it has write norms; files written before 2026-12-07 say nothing and
    read as unweighed)."""
    if stats.model not in ("", model_hash):
        raise DataError(
            f"{path} was computed for model {stats.model}, not this one ({model_hash}); "
            "recompute with `excise stats`"
        )
    if weighed is not None and stats.weighed != weighed:
        raise DataError(
            f"{path} holds keys {'weighed' if stats.weighed else 'unweighed'} by their output's "
            f"rms, and this model's edits need them {'weighed' if weighed else 'unweighed'}; "
            "recompute with `excise stats`"
        )
    return stats
