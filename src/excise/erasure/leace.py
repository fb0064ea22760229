"""LEACE: least-squares concept erasure in closed form.

Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form". For representations
x (mean mu, covariance S) and a concept z (one-hot classes), with W = S^(-1/2) the whitening
matrix, W+ = S^(1/2) its pseudo-inverse and U an orthonormal basis of the column space of
W Cov(x, z), the eraser is
    r(x) = x - W+ U U^T W (x - mu)  =  P x + c,    P = I - W+ U U^T W,   c = (I - P) mu.
After it Cov(r(x), z) = 0: the class-conditional means are equal, so no linear classifier of z
does better than a constant (on the distribution it was fitted on), and among all affine maps
with that property r changes x the least in expected squared norm. P is an oblique projection
(P^2 = P, P != P^T); its null space is spanned by ``proj_left`` (W+ U), and ``proj_right``
(U^T W) reads the erased coordinates, which r(x) holds at the constant ``proj_right @ mu``.
``method="orth"`` uses W = I: P = I - U U^T, the orthogonal projection that removes the span of
Cov(x, z) (for two classes, the difference of the class means); equal class means again, with
more change to x.

Hyper-parameters: ``method`` ("leace"); ``shrinkage`` (True: Ledoit-Wolf shrinkage of S towards
a multiple of I, which keeps the whitening stable when samples are not many times the width);
``svd_tol`` (1e-2: directions of W Cov(x, z) with singular value under this share of the largest
are kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from excise.errors import ExciseError

Method = Literal["leace", "orth"]


@dataclass(frozen=True)
class LeaceEraser:
    proj_left: torch.Tensor  # (hidden, rank)
    proj_right: torch.Tensor  # (rank, hidden)
    mean: torch.Tensor  # (hidden,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        left, right, mean = (t.to(x) for t in (self.proj_left, self.proj_right, self.mean))
        return x - ((x - mean) @ right.T) @ left.T

    @property
    def matrix(self) -> torch.Tensor:
        """P, (hidden, hidden)."""
        eye = torch.eye(self.proj_left.shape[0], dtype=self.proj_left.dtype)
        return eye - self.proj_left @ self.proj_right

    @property
    def shift(self) -> torch.Tensor:
        """c = (I - P) mu, so that r(x) = P x + c."""
        return self.proj_left @ (self.proj_right @ self.mean)

    @property
    def rank(self) -> int:
        return self.proj_left.shape[1]


def ledoit_wolf(centered: torch.Tensor) -> torch.Tensor:
    """Covariance of centered rows (n, d) shrunk towards (trace/d) I by the Ledoit-Wolf amount."""
    n, d = centered.shape
    sample = centered.T @ centered / n
    scale = torch.trace(sample) / d
    eye = torch.eye(d, dtype=sample.dtype)
    distance = ((sample - scale * eye) ** 2).sum()
    norms = (centered**2).sum(1)
    # sum_k ||x_k x_k^T - S||_F^2 without forming the n outer products
    spread = (norms**2 - 2 * ((centered @ sample) * centered).sum(1) + (sample**2).sum()).sum()
    amount = float(torch.clamp(spread / n**2 / distance.clamp(min=1e-30), 0.0, 1.0))
    return amount * scale * eye + (1 - amount) * sample


def fit_leace(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: Method = "leace",
    protect: torch.Tensor | None = None,
    shrinkage: bool = True,
    svd_tol: float = 1e-2,
) -> LeaceEraser:
    """Fit the eraser on rows ``x`` (n, hidden) with integer class ``labels`` (n,).

    ``protect`` (hidden, m), orthonormal columns: directions the eraser must leave unchanged
    (P v = v), e.g. the attention-sink subspace. With it the eraser reads x only through the
    complement Q of those directions: every P = I - C (C^T G C)^-1 C^T G, with C spanning
    Cov(x, z), erases the concept (P Cov(x, z) = 0); G = S^-1 gives LEACE and G = I the
    orthogonal projection, and G = Q (Q^T S Q)^-1 Q^T (or Q Q^T) is the least-change choice that
    reads nothing in the protected directions, so G v = 0 and P v = v there.
    """
    if method not in ("leace", "orth"):
        raise ExciseError(f"unknown LEACE method {method!r}: leace or orth")
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ExciseError("fit_leace needs x (n, hidden) and one label per row")
    if torch.unique(labels).numel() < 2:
        raise ExciseError("LEACE needs examples of at least two classes")
    x = x.to(torch.float64)
    hidden = x.shape[1]
    z = torch.nn.functional.one_hot(labels.long()).to(torch.float64)
    mean = x.mean(0)
    centered = x - mean
    cross = centered.T @ (z - z.mean(0)) / (x.shape[0] - 1)  # Cov(x, z), (hidden, classes)
    eye = torch.eye(hidden, dtype=torch.float64)
    complement = eye
    if protect is not None and protect.shape[1] > 0:
        basis = protect.to(torch.float64)
        complement = eye - basis @ basis.T
    if method == "leace":
        covariance = ledoit_wolf(centered) if shrinkage else centered.T @ centered / (len(x) - 1)
        inner = complement @ covariance @ complement
        gram = complement @ _psd_pinv(inner) @ complement
        whiten = _psd_pinv(covariance, power=0.5)
    else:
        gram = complement
        whiten = eye
    # the concept's directions, dropping those that are numerically absent (in whitened units)
    u, s, _ = torch.linalg.svd(whiten @ cross, full_matrices=False)
    kept = u[:, s > svd_tol * s.max()]
    directions = _psd_pinv(whiten) @ kept if method == "leace" else kept  # (hidden, rank)
    reads = directions.T @ gram  # (rank, hidden)
    left = directions @ torch.linalg.inv(reads @ directions)
    return LeaceEraser(left, reads, mean)


def _psd_pinv(matrix: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """matrix^(-power) on its numerical range, 0 on its null space (matrix symmetric PSD)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    keep = values > values.max() * values.numel() * torch.finfo(values.dtype).eps
    inverse = torch.where(keep, values.clamp(min=1e-300) ** -power, 0.0)
    return (vectors * inverse) @ vectors.T
