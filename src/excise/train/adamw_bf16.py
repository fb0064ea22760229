"""AdamW with its two moments kept in bfloat16: 4 bytes of optimizer state per weight instead
of torch's 8 (``optimizer_states: bf16``).

Loshchilov & Hutter 2019, "Decoupled weight decay regularization" (AdamW); the update is
torch's ``AdamW`` formula computed in float32, chunk by chunk, from the stored moments.
Storing the moments with round-to-nearest would freeze the second one: with beta2 = 0.999 a
step changes it by 0.1%, below half a bfloat16 step (0.4%), so it would never decay or grow.
They are written back with stochastic rounding instead (unbiased: the expected stored value is
the float32 one; Zamirai et al. 2020, "Revisiting BFloat16 training"). The rounding noise is a
pure function of (``seed``, step, weight), so a resumed run rounds exactly as an uninterrupted
one. Hyper-parameters as torch's AdamW: ``lr``, ``betas`` (0.9, 0.999), ``eps`` (1e-8),
``weight_decay`` (0.0); ``chunk`` (2**20 entries) bounds the float32 temporaries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_update

# the rounding noise: 2 * chunk random int32 per device, drawn once, shared by every instance
_NOISE: dict[tuple[torch.device, int], torch.Tensor] = {}


def round_stochastic_(values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Perturb ``values`` (float32, in place) so that torch's round-to-nearest conversion to
    bfloat16 rounds them stochastically: ``noise`` (int32, uniform in [-2**15, 2**15)) added to
    the 16 bits a bfloat16 drops makes "nearest" round up with probability equal to the dropped
    fraction (as truncating after adding [0, 2**16) noise would, one pass fewer).

    Entries whose magnitude's bit pattern is below 2**15 (zeros, and subnormals far below any
    bfloat16 step) are left as they are: noise added to them could cross the sign bit, and 0.0
    (a moment of a weight with no gradient yet, e.g. an embedding row not in the batch) would
    become the bit pattern of a NaN."""
    bits = values.view(torch.int32)
    crossing = (bits & 0x7FFFFFFF) < (1 << 15)
    bits.add_(noise.masked_fill(crossing, 0))
    return values


class AdamWBF16(torch.optim.Optimizer):
    """AdamW whose ``exp_avg`` and ``exp_avg_sq`` are bfloat16 tensors (the weights keep their
    own dtype); see the module docstring. The float32 arithmetic is torch's fused AdamW kernel
    where the device has one (CPU, CUDA), run on float32 copies of a chunk of the moments.

    The rounding noise is one random buffer of ``2 * chunk`` entries drawn once per device (8 MiB,
    shared by all instances), read at an offset that is a pure function of (``seed``, weight,
    step, chunk): drawing fresh random numbers for every entry cost more than the whole update
    on a CPU."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        seed: int = 0,
        chunk: int = 1 << 20,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.seed, self.chunk = seed, chunk

    def noise_at(self, device: torch.device, key: tuple[int, ...], size: int) -> torch.Tensor:
        """``size`` noise entries at an offset that is a pure function of (``seed``, ``key``)."""
        where = (device, self.chunk)
        if where not in _NOISE:  # one buffer for every instance (in backward: one per weight)
            generator = torch.Generator().manual_seed(0)
            draw = torch.randint(
                -(1 << 15), 1 << 15, (2 * self.chunk,), dtype=torch.int32, generator=generator
            )
            _NOISE[where] = draw.to(device)
        offset = hash((self.seed, *key)) % self.chunk
        return _NOISE[where][offset : offset + size]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        position = 0
        for group in self.param_groups:
            for param in group["params"]:
                position += 1
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.bfloat16)
                self.update(param, state, group, position)
                state["step"] += 1
        return loss

    def update(self, param: torch.Tensor, state: dict, group: dict, position: int) -> None:
        beta1, beta2 = group["betas"]
        step = int(state["step"])  # before this one
        fused = param.device.type in ("cpu", "cuda")
        weights = param.view(-1)  # (entries,) views: the chunks below write through
        grads = param.grad.reshape(-1)
        means, squares = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        for start in range(0, weights.numel(), self.chunk):
            part = slice(start, start + self.chunk)
            mean, square = means[part].float(), squares[part].float()
            weight = weights[part] if param.dtype == torch.float32 else weights[part].float()
            adamw_update(
                [weight],
                [grads[part].float()],
                [mean],
                [square],
                [],
                [torch.tensor(float(step), device=param.device if fused else "cpu")],
                fused=fused,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )
            if weight.data_ptr() != weights[part].data_ptr():
                weights[part].copy_(weight)
            for index, (stored, exact) in enumerate(((means, mean), (squares, square))):
                noise = self.noise_at(param.device, (position, step, start, index), exact.numel())
                stored[part].copy_(round_stochastic_(exact, noise))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts a loaded state to the weights' dtype; the moments stay bfloat16 (exact)
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(torch.bfloat16)
