"""Iterative nullspace projection: erase a concept subspace found by successive linear probes.

Ravfogel et al. 2020, "Null it out: guarding protected attributes by iterative nullspace
projection". A logistic probe is fitted to the concept, its direction is removed from the data
(orthogonal projection), and the next probe is fitted on what is left, ``rounds`` times; last,
the orthogonal LEACE step (:func:`excise.erasure.leace.fit_leace`, ``method="orth"``) removes the
class-mean difference of what is left, so the result also has LEACE's property on the rows it was
fitted on (equal class means). The eraser is P = (I - L R)(I - B B^T), B the probe directions:
idempotent, and the orthogonal projection off [B, mean difference] when nothing is protected; it
folds into weights as any linear map (:mod:`excise.activations.fold`).

Why more than one direction: LEACE makes the class means equal on the rows it was fitted on, so
no linear probe *trained on those rows* beats a constant. A probe trained on other samples of the
same concept (new prompts) still can when the classes are clustered (token identities, topics):
equal means is a knife edge, and a little sampling noise lets the probe find a separating
hyperplane. Each round removes one such hyperplane's normal.

Hyper-parameters: ``rounds`` (probe directions before the final mean difference), ``l2`` (1e-2)
and ``steps`` (100) of each probe (L-BFGS on standardised features, as the evaluation probes),
``protect`` (orthonormal columns the eraser must leave unchanged, e.g. the attention sink).
"""

from __future__ import annotations

import torch

from excise.activations.probe import fit_logistic
from excise.erasure.leace import LeaceEraser, fit_leace
from excise.errors import ExciseError


def fit_inlp(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    rounds: int,
    protect: torch.Tensor | None = None,
    l2: float = 1e-2,
    steps: int = 100,
) -> LeaceEraser:
    """Fit on rows ``x`` (n, hidden) with integer ``labels`` (n,); ``rounds`` >= 0."""
    if rounds < 0:
        raise ExciseError("INLP rounds must be >= 0")
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ExciseError("fit_inlp needs x (n, hidden) and one label per row")
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise ExciseError("INLP needs examples of at least two classes")
    x = x.to(torch.float64)
    labels = labels.long()
    mean = x.mean(0)
    hidden = x.shape[1]
    guard = torch.zeros(hidden, 0, dtype=torch.float64)
    if protect is not None:
        guard = protect.to(torch.float64)
    basis = torch.zeros(hidden, 0, dtype=torch.float64)

    def add(direction: torch.Tensor) -> None:
        nonlocal basis
        for known in (guard, basis):  # twice: Gram-Schmidt loses orthogonality in one pass
            direction = direction - known @ (known.T @ direction)
            direction = direction - known @ (known.T @ direction)
        if direction.norm() > 1e-8 * max(1.0, float(x.abs().max())):
            basis = torch.cat([basis, (direction / direction.norm())[:, None]], 1)

    width = int(labels.max()) + 1
    for _ in range(rounds):
        if basis.shape[1] + guard.shape[1] >= hidden - 1:
            break
        left = x - (x @ basis) @ basis.T
        center, scale = left.mean(0), left.std(0).clamp(min=1e-6)
        with torch.enable_grad():
            weight, _ = fit_logistic(
                ((left - center) / scale).float(), labels, width, l2=l2, steps=steps
            )
        # (hidden, classes) in the stream's coordinates; only differences between classes count
        raw = weight.double() / scale[:, None]
        for cls in range(1, width):
            add(raw[:, cls] - raw[:, 0])
    # last, LEACE's own step on what is left: equal class means, protected directions kept
    last = fit_leace(x - (x @ basis) @ basis.T, labels, method="orth", protect=protect)
    last_left, last_right = last.proj_left.to(x), last.proj_right.to(x)
    # (I - L R)(I - B B^T) = I - [B, L] [B^T; R (I - B B^T)]
    right = torch.cat([basis.T, last_right - (last_right @ basis) @ basis.T])
    return LeaceEraser(torch.cat([basis, last_left], 1), right, mean)
