"""A key-routed side memory on one MLP: the store of the ``memory`` editor
(:mod:`excise.editing.memory`), after GRACE (Hartvigsen et al. 2023) and WISE (Wang et al. 2024).

The memory holds entries (values) and the keys that route to them. A key is an MLP output
projection's input (the "key" of ROME and MEMIT) at an edited subject's last token, one per
context the edit was written in; a value is the shift of that projection's output that makes
the edit. On every forward each token's key is compared with every stored key by cosine
similarity after whitening with the key statistics (``whiten``: ``(C / mean eig(C) + ridge
I)^-1/2``, so that the directions all text shares do not make unrelated tokens look alike); a
token whose best similarity is at least ``threshold`` gets that key's entry's value added, every
other token passes through unchanged. Unrelated inputs therefore compute exactly what the
unedited model computes: sequential edits cannot drift what they never route. A key close to the
first token's (``sink``: the attention sink's, the same whatever the token) is neither stored
nor routed (``SINK_LIMIT``).

Storage: the memory's tensors are buffers of a child module (``excise_memory``) of the edited
projection, so the model's ``state_dict`` (and with it :func:`excise.models.fingerprint` and the
caches keyed by it) holds them. :func:`excise.models.save_model` writes them to ``FILE`` beside
the weights, which stay the unedited ones: **``transformers``' ``from_pretrained`` loads the
model without the edits**; :func:`excise.models.load_model` (and every excise command) attaches
the memory again. The checkpoint's ``config.json`` names the file (``excise_memory``) and its
model card says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from excise.arch import block_part, num_layers
from excise.errors import ModelError

FILE = "excise-memory.safetensors"
CHILD = "excise_memory"
RIDGE = 0.01  # added to the normalised moment before its inverse square root
# A key this close to the sink direction is neither stored nor routed. On SmolLM2-135M (layer
# 8, no BOS token) the first token's key is the attention sink's whatever the token: cosine
# 0.80-0.98 to their mean over 200 text openings, while 99.9% of other tokens stay under 0.27;
# stored, such a key routed every text's first token (bench/results/memory-routing-*.md).
SINK_LIMIT = 0.5


class SideMemory(nn.Module):
    """Keys routed by whitened cosine similarity to the values of their entries; see the module
    docstring. An entry (a value) may own several keys: one per context it was written in."""

    def __init__(self, whiten: torch.Tensor, hidden: int, threshold: float) -> None:
        super().__init__()
        width = whiten.shape[0]
        self.register_buffer("whiten", whiten.float())
        self.register_buffer("sink", torch.zeros(width))  # whitened unit direction (zero: none)
        self.register_buffer("keys", torch.zeros(0, width))  # whitened, unit length
        self.register_buffer("owners", torch.zeros(0, dtype=torch.long))  # key -> entry
        self.register_buffer("values", torch.zeros(0, hidden))  # entry -> shift
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.layer = -1  # the decoder block it sits in, set by attach

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SideMemory:
        """A memory with the entries (any number) and settings of a saved or copied one's
        tensors (its ``state_dict``)."""
        memory = cls(tensors["whiten"].clone(), tensors["values"].shape[1], 0.0)
        for name in ("sink", "keys", "values", "threshold"):
            setattr(memory, name, tensors[name].to(torch.float32).clone())
        memory.owners = tensors["owners"].to(torch.long).clone()
        return memory

    @property
    def size(self) -> int:
        """Entries (values); each may own several keys."""
        return self.values.shape[0]

    def directions(self, keys: torch.Tensor) -> torch.Tensor:
        """Whitened unit directions of ``keys`` (..., width)."""
        return nn.functional.normalize(keys.float() @ self.whiten.float(), dim=-1)

    def routable(self, directions: torch.Tensor) -> torch.Tensor:
        """Whether each direction is far enough from the attention sink's to be told apart
        (the first token's key has one direction whatever the token: SINK_LIMIT)."""
        return directions @ self.sink.float() < SINK_LIMIT

    def add(
        self, keys: torch.Tensor, groups: torch.Tensor, values: torch.Tensor, merge_above: float
    ) -> list[int]:
        """Store ``values`` (entries, hidden), each with the ``keys`` (n, width) whose ``groups``
        (n,) name it; sink-like keys are left out. An entry with a key within ``merge_above``
        of a key stored before this call adds its value to that key's entry instead (the new
        value was found with the old one applied). Returns, per value, the entry that holds it
        (-1: none of its keys can be routed)."""
        units = self.directions(keys.to(self.whiten.device))
        usable = self.routable(units)
        groups = groups.to(self.whiten.device)
        values = values.to(self.values)
        old_keys, old_owners = self.keys, self.owners
        new_keys, new_owners, stored = [old_keys], [old_owners], []
        for group, value in enumerate(values):
            mine = units[(groups == group) & usable]
            if not len(mine):
                stored.append(-1)
                continue
            owner = None
            if len(old_keys):
                best, index = (mine @ old_keys.T).max(-1)
                if float(best.max()) >= merge_above:
                    owner = int(old_owners[index[best.argmax()]])
                    self.values[owner] += value
            if owner is None:
                owner = self.size
                self.values = torch.cat([self.values, value[None]])
            stored.append(owner)
            new_keys.append(mine)
            new_owners.append(torch.full((len(mine),), owner, device=mine.device))
        self.keys = torch.cat(new_keys)
        self.owners = torch.cat(new_owners)
        return stored

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        """What to add to the projection's output for ``keys`` (..., width): (..., hidden)."""
        if not self.size:
            return keys.new_zeros((*keys.shape[:-1], self.values.shape[1]))
        units = self.directions(keys)  # float32 whatever the model's dtype
        best, index = (units @ self.keys.float().T).max(-1)
        routed = ((best >= self.threshold.float()) & self.routable(units)).unsqueeze(-1)
        return torch.where(routed, self.values[self.owners[index]].float(), 0.0)


def _route(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    memory = getattr(module, CHILD)
    return output + memory(args[0]).to(output.dtype)


def whitening(moment: torch.Tensor) -> torch.Tensor:
    """``(C / mean eig + RIDGE I)^-1/2`` of a key second moment ``C`` (float32)."""
    values, vectors = torch.linalg.eigh(moment.double() / moment.diagonal().mean().double())
    scale = (values.clamp(min=0) + RIDGE).rsqrt()
    return ((vectors * scale) @ vectors.T).float()


def find(model: nn.Module) -> tuple[int, SideMemory] | None:
    """``(layer, memory)`` of the model's side memory, or None."""
    for module in model.modules():  # any family: no layout needed when there is none
        if isinstance(module, SideMemory):
            return module.layer, module
    return None


def attach(model: nn.Module, layer: int, memory: SideMemory) -> SideMemory:
    """Put ``memory`` on block ``layer``'s MLP output projection (one memory per model)."""
    present = find(model)
    if present is not None:
        raise ModelError(f"the model already has a side memory (on layer {present[0]})")
    target = block_part(model, layer, "mlp_out")
    memory.layer = layer
    weight = next(target.parameters())
    target.add_module(CHILD, memory.to(weight.device))
    target.register_forward_hook(_route)
    return memory


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without the memory's tensors (what ``from_pretrained`` reads)."""
    return {k: v for k, v in model.state_dict().items() if f".{CHILD}." not in k}


def save_beside(model: nn.Module, found: tuple[int, SideMemory], folder: Path) -> None:
    """Save ``model`` with ``from_pretrained``'s format: the unedited weights, the config
    naming the memory, and the memory in ``FILE`` beside them."""
    layer, memory = found
    model.config.excise_memory = describe(memory, layer)
    model.save_pretrained(folder, safe_serialization=True, state_dict=base_state(model))
    tensors = {name: t.detach().cpu().contiguous() for name, t in memory.state_dict().items()}
    save_file(tensors, folder / FILE, metadata={"layer": str(layer), "format": "excise-memory-1"})


def carry(model: nn.Module, copy: nn.Module) -> None:
    """Attach to ``copy`` (same family and size) a copy of ``model``'s memory, if it has one."""
    found = find(model)
    if found is not None:
        attach(copy, found[0], SideMemory.from_tensors(found[1].state_dict()))


def load(model: nn.Module, folder: str | Path) -> SideMemory | None:
    """Attach the memory saved in ``folder`` (None when it holds none)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            layer = int(handle.metadata()["layer"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        memory = SideMemory.from_tensors(tensors)
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        raise ModelError(f"cannot read the side memory {path}: {error}") from None
    if not 0 <= layer < num_layers(model):
        raise ModelError(f"the side memory {path} is for layer {layer}, not in this model")
    shape = set(next(block_part(model, layer, "mlp_out").parameters()).shape)
    if {memory.whiten.shape[0], memory.values.shape[1]} != shape:
        raise ModelError(
            f"the side memory {path} does not fit this model (keys {memory.whiten.shape[0]} "
            f"wide, shifts {memory.values.shape[1]}; layer {layer}'s projection is "
            f"{sorted(shape)}): it was saved with another model"
        )
    return attach(model, layer, memory)


def describe(memory: SideMemory, layer: int) -> dict[str, object]:
    return {
        "file": FILE,
        "layer": layer,
        "entries": memory.size,
        "keys": memory.keys.shape[0],
        "threshold": round(float(memory.threshold), 4),  # stored as float32
    }
