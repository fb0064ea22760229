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
``weight_decay`` (0.0); ``chunk`` (2**18 entries) is the size of the float32 scratch.

Speed: per chunk, the moments are widened into two float32 scratch buffers that every instance
shares (allocated once per device: no allocation in the step, and the chunk stays in cache),
torch's fused AdamW kernel runs on them in place, and each moment goes back in three passes over
the cached chunk (add the noise to its bit pattern, clear the low half, convert exactly).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_update

# shared by every instance (in backward there is one per weight), drawn/allocated once per
# (device, chunk): the rounding noise (2 * chunk int32) and the two float32 scratch chunks
_NOISE: dict[tuple[torch.device, int], torch.Tensor] = {}
_SCRATCH: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}


def draw_noise(size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``size`` int32 uniform in [0, 2**16): the noise :func:`store_stochastic_` adds."""
    return torch.randint(0, 1 << 16, (size,), dtype=torch.int32, generator=generator)


def store_stochastic_(
    stored: torch.Tensor, values: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Write float32 ``values`` into bfloat16 ``stored`` (same shape) rounded stochastically;
    ``values`` is clobbered. ``noise`` (int32, uniform in [0, 2**16)) is added to the 16 bits a
    bfloat16 drops and those bits are then cleared, which leaves an exact bfloat16 value: the
    magnitude rounds up with probability equal to the dropped fraction, else down (the sign bit
    is untouched, so both signs are unbiased). Zeros stay zeros (of either sign: the noise never
    carries out of the low half), so a moment that is still 0.0 cannot become a NaN's bit
    pattern; infinities and NaNs stay what they are."""
    bits = values.view(torch.int32)
    bits.add_(noise)
    bits.bitwise_and_(-(1 << 16))  # clear the low half: exact in bfloat16 (cheaper on a CPU
    stored.copy_(values)  # than copying the high halves out through a strided view)
    return stored


class AdamWBF16(torch.optim.Optimizer):
    """AdamW whose ``exp_avg`` and ``exp_avg_sq`` are bfloat16 tensors (the weights keep their
    own dtype); see the module docstring. The float32 arithmetic is torch's fused AdamW kernel
    where the device has one (CPU, CUDA), run on float32 copies of a chunk of the moments.

    The rounding noise is one random buffer of ``2 * chunk`` entries drawn once per device (2 MiB
    at the default chunk, shared by all instances), read at an offset that is a pure function of
    (``seed``, weight, step, chunk): drawing fresh random numbers for every entry cost more than
    the whole update on a CPU."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        seed: int = 0,
        chunk: int = 1 << 18,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.seed, self.chunk = seed, chunk

    def noise_at(self, device: torch.device, key: tuple[int, ...], size: int) -> torch.Tensor:
        """``size`` noise entries at an offset that is a pure function of (``seed``, ``key``)."""
        where = (device, self.chunk)
        if where not in _NOISE:
            generator = torch.Generator().manual_seed(0)
            _NOISE[where] = draw_noise(2 * self.chunk, generator).to(device)
        offset = hash((self.seed, *key)) % self.chunk
        return _NOISE[where][offset : offset + size]

    def scratch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        where = (device, self.chunk)
        if where not in _SCRATCH:
            _SCRATCH[where] = (
                torch.empty(self.chunk, device=device),
                torch.empty(self.chunk, device=device),
            )
        return _SCRATCH[where]

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
        step = int(state["step"])  # before this one
        weights = param.view(-1)  # (entries,) views: the chunks below write through
        grads = param.grad.reshape(-1)
        means, squares = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        mean_scratch, square_scratch = self.scratch(param.device)
        for start in range(0, weights.numel(), self.chunk):
            part = slice(start, start + self.chunk)
            size = means[part].numel()
            mean, square = mean_scratch[:size], square_scratch[:size]
            mean.copy_(means[part])
            square.copy_(squares[part])
            weight = weights[part] if param.dtype == torch.float32 else weights[part].float()
            self.adamw(weight, grads[part].float(), mean, square, step, group)
            if weight.data_ptr() != weights[part].data_ptr():
                weights[part].copy_(weight)
            for index, (stored, exact) in enumerate(((means, mean), (squares, square))):
                noise = self.noise_at(param.device, (position, step, start, index), size)
                store_stochastic_(stored[part], exact, noise)

    @staticmethod
    def adamw(
        weight: torch.Tensor,
        grad: torch.Tensor,
        mean: torch.Tensor,
        square: torch.Tensor,
        step: int,
        group: dict,
    ) -> None:
        """One AdamW step of float32 tensors in place, ``step`` steps done before it: torch's
        fused kernel called directly where there is one (the functional ``adamw`` wrapper
        around it cost ~0.5 ms a call on a CPU, more than a chunk's arithmetic), else its
        single-tensor form."""
        beta1, beta2 = group["betas"]
        options = {"lr": group["lr"], "weight_decay": group["weight_decay"], "eps": group["eps"]}
        if weight.device.type in ("cpu", "cuda"):
            done = torch.tensor(float(step + 1), device=weight.device)  # counts this step
            torch._fused_adamw_(  # noqa: SLF001 - torch's own kernel, as torch.optim calls it
                [weight],
                [grad],
                [mean],
                [square],
                [],
                [done],
                beta1=beta1,
                beta2=beta2,
                amsgrad=False,
                maximize=False,
                **options,
            )
            return
        adamw_update(
            [weight],
            [grad],
            [mean],
            [square],
            [],
            [torch.tensor(float(step))],
            fused=False,
            foreach=False,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            maximize=False,
            **options,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts a loaded state to the weights' dtype; the moments stay bfloat16 (exact)
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(torch.bfloat16)
