"""LoRA adapters for any gradient-based method (Hu et al. 2021, "LoRA: low-rank adaptation of
large language models"), through peft.

A method's ``prepare`` first chooses the weights it trains and caches its references (NPO's
reference log-probabilities, RMU's frozen activations) from the model as it is; then
:func:`add_adapters` puts a LoRA adapter on every linear layer of the decoder blocks
(:func:`excise.arch.decoder_layers`) whose weight the method left trainable, optionally only on
module names listed in ``targets`` (``q_proj``, ``down_proj``, ...), and freezes every other
weight. So ``rmu`` gets adapters on its 3 MLP output projections and ``npo`` on every linear layer
of every block. The adapters start at zero (B = 0), so the cached references stay exact.

After training, :func:`merge_adapters` folds W + (alpha / r) B A into each weight, puts the plain
layers back, and returns the adapter in peft's own format: :meth:`Adapter.save` writes
``adapter_config.json`` and ``adapter_model.safetensors``, which
``peft.PeftModel.from_pretrained(base_model, folder)`` loads.

Settings: ``rank`` r; ``alpha`` (None: 2 r, scale 2); ``targets`` (None: every linear layer the
method trains); ``dropout`` (0.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from excise.arch import decoder_layers, get_module, layout
from excise.errors import ConfigError

LR_FACTOR = 10.0  # adapters learn from zero: a method's full fine-tuning lr is too small for them


@dataclass
class LoraSettings:
    rank: int
    alpha: float | None = None
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"--lora takes a rank >= 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.targets is not None:
            self.targets = tuple(t.strip() for t in self.targets if t.strip())
            if not self.targets:
                raise ConfigError("--lora-targets is empty; give module names like q_proj,v_proj")

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)


@dataclass
class Adapter:
    """A trained adapter in peft's layout: its config and its tensors (keys as peft saves them)."""

    config: object  # peft.LoraConfig
    tensors: dict[str, torch.Tensor]

    @property
    def layers(self) -> list[str]:
        """Full names of the adapted layers."""
        prefix, suffix = "base_model.model.", ".lora_A.weight"
        return sorted(k[len(prefix) : -len(suffix)] for k in self.tensors if k.endswith(suffix))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(folder))
        save_file(self.tensors, str(folder / "adapter_model.safetensors"))
        return folder


def check_lora(method, method_config, lora: LoraSettings | None) -> None:
    """Refuse ``--lora`` for a method that cannot train through excise's adapters:
    one that changes the base weights itself (``takes_lora`` False: cir) or one with its own LoRA
    option (``lora_rank``: rr). ``method_config`` may be the config class (checked early)."""
    if lora is None:
        return
    if not getattr(method, "takes_lora", True):
        name = getattr(method, "name", "this method")
        raise ConfigError(f"{name} changes the base weights itself; train it without --lora")
    if hasattr(method_config, "lora_rank"):
        # such a method (rr) injects and merges adapters itself, ours included
        raise ConfigError(
            "this method has its own LoRA option (lora_rank); set it with --set lora_rank=R "
            "instead of --lora"
        )


def _is_linear(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layer

    return isinstance(module, torch.nn.Linear | Conv1D)


def has_adapters(model: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def adapter_targets(model: torch.nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the decoder-block linear layers to adapt: trained by the method, and named
    in ``settings.targets`` when given."""
    prefix = layout(model).layers
    found, names_seen = [], set()
    for index, block in enumerate(decoder_layers(model)):
        for name, module in block.named_modules():
            if not name or not _is_linear(module):
                continue
            names_seen.add(name.rsplit(".", 1)[-1])
            if settings.targets is not None and name.rsplit(".", 1)[-1] not in settings.targets:
                continue
            if module.weight.requires_grad:
                found.append(f"{prefix}.{index}.{name}")
    if settings.targets is not None and (unknown := set(settings.targets) - names_seen):
        raise ConfigError(
            f"--lora-targets {', '.join(sorted(unknown))}: no such layer in the decoder blocks; "
            f"this model has {', '.join(sorted(names_seen))}"
        )
    if not found:
        raise ConfigError(
            "no layer to put LoRA adapters on: the method trains none of the linear layers named "
            "in --lora-targets; drop --lora-targets or name layers the method trains"
        )
    return found


def add_adapters(model: torch.nn.Module, settings: LoraSettings) -> list[str]:
    """Inject zero-initialised adapters (see the module docstring); freeze everything else.

    Returns the adapted layers' names.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("--lora needs peft: pip install 'excise[lora]'") from None

    if has_adapters(model):
        raise ConfigError(
            "this method brings its own LoRA adapters (rr: option lora_rank); use its option, "
            "or set lora_rank=0 to train it with --lora"
        )
    targets = adapter_targets(model, settings)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.scale_alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=model.config.model_type == "gpt2",
        bias="none",
        task_type="CAUSAL_LM",
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return targets


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under the keys ``PeftModel.save_pretrained`` writes."""
    return {
        "base_model.model." + name.replace(".default", ""): param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if ".lora_" in name
    }


def merge_adapters(model: torch.nn.Module, base_model: str | None = None) -> Adapter:
    """Fold the adapters into the weights, restore the plain layers, and return the adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = model.peft_config["default"]
    config.base_model_name_or_path = base_model
    config.inference_mode = True
    adapter = Adapter(config, adapter_state(model))
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(get_module(model, parent), child, module.get_base_layer())
    del model.peft_config
    return adapter
