"""Min-norm point of the convex hull of K gradients (MGDA; Sener & Koltun 2018), PE-LTR bounds.

Solves   min_w || sum_k w_k g_k ||_2   s.t.  w_k >= c_k,  sum_k w_k = 1
for one (K, D) problem or a batch (B, K, D) at once. Everything works on the Gram matrix
M = G G^T (K x K, float64), so D only enters through one batched matmul.

Lower bounds (PE-LTR, Lin et al. RecSys 2019). With s = 1 - sum_k c_k >= 0 write
w = c + s v, v on the simplex. Because sum_k v_k = 1,
    sum_k w_k g_k = sum_k c_k g_k + s sum_k v_k g_k = sum_k v_k (s g_k + sum_j c_j g_j),
so v solves the *unbounded* problem on g'_k = s g_k + G^T c, i.e. G' = A G with
A = s I + 1 c^T and Gram M' = A M A^T. Then w = c + s v (w = c when s = 0).

Solvers on the simplex:
- K = 2: closed form w_1 = clip((M_22 - M_12) / (M_11 + M_22 - 2 M_12), 0, 1); 1/2 when the
  denominator ||g_1 - g_2||^2 vanishes (identical gradients: every w is optimal).
- K <= ``EXACT_MAX_K``: exact active-set enumeration. The optimum is the stationary point of
  the equality-constrained QP on some face S of the simplex; solve every face's KKT system
  [[M_SS, 1], [1^T, 0]] (pseudo-inverse: parallel/zero gradients make it singular but then a
  smaller face also holds an optimum, down to the always-feasible vertices), keep the feasible
  solutions and take the best; ties go to the largest support (zero gradients -> uniform).
- larger K: Frank-Wolfe with exact line search (Sener & Koltun's solver), duality-gap stop.
"""

from __future__ import annotations

import itertools
import logging
from typing import Literal

import torch

from learner import distributed

log = logging.getLogger(__name__)
Tensor = torch.Tensor
Normalize = Literal["none", "l2", "loss", "loss+", "running"]
Method = Literal["auto", "closed_form", "exact", "frank_wolfe"]

EXACT_MAX_K = 8  # 2^K - 1 faces: 255 small solves per problem at K = 8
_EPS = 1e-12


def normalize_grads(grads: Tensor, normalize: Normalize = "none", losses: Tensor | None = None) -> Tensor:
    """Scale each g_k (``grads`` (..., K, D)): "l2" by 1/||g_k||, "loss" by 1/L_k, "loss+" by both.

    Zero gradients stay zero. ``losses`` (..., K) is needed for "loss" and "loss+". "running"
    needs state across steps: see :class:`RunningGradScale` (here it changes nothing).
    """
    if normalize in ("none", "running"):
        return grads
    scale = torch.ones(grads.shape[:-1], dtype=grads.dtype, device=grads.device)  # (..., K)
    if normalize in ("l2", "loss+"):
        scale = scale / grads.norm(dim=-1).clamp_min(_EPS)
    if normalize in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalize={normalize!r} needs losses")
        scale = scale / losses.detach().to(grads.dtype).abs().clamp_min(_EPS)
    elif normalize != "l2":
        raise ValueError(f"unknown normalize {normalize!r}")
    return grads * scale.unsqueeze(-1)


class RunningGradScale:
    """Divides g_k by a running mean (EMA over steps) of ||g_k||, one scale per objective.

    Why: min-norm weights favour the objective with the smaller gradients. When one loss has
    gradients orders of magnitude larger than another (a Tweedie dwell loss vs a BCE click
    loss) every list's optimum is the small objective's corner and a weight generator rewarded
    by -||sum_k w_k g_k|| collapses there. A per-step "l2" normalization removes the magnitudes
    altogether (with K = 2 the min-norm weights are then always (1/2, 1/2)); a *running* scale
    removes only the global imbalance and keeps the differences between lists and users.
    """

    def __init__(self, momentum: float = 0.99) -> None:
        self.momentum = momentum
        self.mean_norm: Tensor | None = None  # (K,)

    def __call__(self, grads: Tensor) -> Tensor:
        """``grads`` (..., K, D) scaled; updates the running norms from this step's mean norms."""
        # data parallel: the global batch's mean norms (equal shares per rank), the same scale everywhere
        norms = distributed.average(self._mean_norms(grads))
        if self.mean_norm is None:
            self.mean_norm = norms
        else:
            self.mean_norm = self.momentum * self.mean_norm + (1.0 - self.momentum) * norms
        return self.scale(grads)

    def scale(self, grads: Tensor) -> Tensor:
        """``grads`` (..., K, D) scaled by the running norms as they are (by their own norms
        before the first update); for looking without training."""
        mean_norm = self._mean_norms(grads) if self.mean_norm is None else self.mean_norm
        return grads / mean_norm.clamp_min(_EPS).unsqueeze(-1)

    @staticmethod
    def _mean_norms(grads: Tensor) -> Tensor:
        return grads.detach().norm(dim=-1).reshape(-1, grads.shape[-2]).mean(0)  # (K,)

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"mean_norm": None if self.mean_norm is None else self.mean_norm.cpu()}

    def load_state_dict(self, state: dict[str, Tensor | None], device: torch.device | str = "cpu") -> None:
        mean_norm = state["mean_norm"]
        self.mean_norm = None if mean_norm is None else mean_norm.to(device)


def min_norm(
    grads: Tensor,
    lower_bounds: Tensor | None = None,
    normalize: Normalize = "none",
    losses: Tensor | None = None,
    method: Method = "auto",
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> Tensor:
    """Simplex weights (K,) or (B, K) minimizing ||sum_k w_k g_k||_2 over ``grads`` (K, D) or (B, K, D).

    ``lower_bounds`` (K,) or (B, K): w_k >= c_k, requires c >= 0 and sum_k c_k <= 1.
    ``normalize``/``losses``: see :func:`normalize_grads`. Returns ``grads.dtype`` weights.
    """
    if grads.dim() not in (2, 3):
        raise ValueError(f"grads must be (K, D) or (B, K, D), got {tuple(grads.shape)}")
    unbatched = grads.dim() == 2
    g = normalize_grads(grads.detach(), normalize, losses).to(torch.float64)
    if unbatched:
        g = g.unsqueeze(0)
    g = torch.nan_to_num(g)
    gram = g @ g.transpose(1, 2)  # (B, K, K)
    k = gram.shape[-1]

    bounds = None
    if lower_bounds is not None:
        bounds = _check_bounds(lower_bounds, gram)
        slack = 1.0 - bounds.sum(-1)  # (B,)
        a = slack[:, None, None] * torch.eye(k, dtype=gram.dtype, device=gram.device)
        a = a + bounds.unsqueeze(1)  # A = s I + 1 c^T: row k is s e_k + c
        gram = a @ gram @ a.transpose(1, 2)

    v = _solve_simplex(gram, method, max_iter, tol)
    if bounds is not None:
        v = bounds + (1.0 - bounds.sum(-1, keepdim=True)) * v
    w = v.to(grads.dtype)
    return w[0] if unbatched else w


def weighted_norm(grads: Tensor, weights: Tensor) -> Tensor:
    """|| sum_k w_k g_k ||_2 for grads (..., K, D) and weights (..., K) -> (...)."""
    return (weights.unsqueeze(-1) * grads).sum(-2).norm(dim=-1)


def gram_norm(gram: Tensor, weights: Tensor) -> Tensor:
    """|| sum_k w_k g_k ||_2 = sqrt(w^T G w) from the Gram matrices ``gram`` (B, K, K) of the
    gradients, for ``weights`` (B, K) -> (B,) or (B, G, K) -> (B, G); differentiable in w.

    Computed in float64: near a Pareto-stationary point w^T G w cancels to ~0, and its square
    root's gradient G w / sqrt(w^T G w) (bounded by sqrt of G's top eigenvalue) needs the digits.
    """
    w = weights.to(torch.float64)
    one = w.dim() == 2
    w = w.unsqueeze(1) if one else w  # (B, G, K)
    quad = ((w @ gram.to(torch.float64)) * w).sum(-1)  # (B, G)
    norm = quad.clamp_min(1e-30).sqrt().to(weights.dtype)
    return norm.squeeze(1) if one else norm


def _check_bounds(lower_bounds: Tensor, gram: Tensor) -> Tensor:
    c = lower_bounds.detach().to(gram.dtype).to(gram.device)
    c = c.expand(gram.shape[0], gram.shape[-1]) if c.dim() == 1 else c
    if c.shape != gram.shape[:2]:
        raise ValueError(f"lower_bounds must be (K,) or (B, K), got {tuple(lower_bounds.shape)}")
    if (c < 0).any() or (c.sum(-1) > 1 + 1e-9).any():
        raise ValueError("lower bounds need c_k >= 0 and sum_k c_k <= 1")
    return c


def _solve_simplex(gram: Tensor, method: Method, max_iter: int, tol: float) -> Tensor:
    k = gram.shape[-1]
    if method == "auto":
        method = "closed_form" if k == 2 else ("exact" if k <= EXACT_MAX_K else "frank_wolfe")
    if k == 1:
        return torch.ones(gram.shape[:2], dtype=gram.dtype, device=gram.device)
    if method == "closed_form":
        if k != 2:
            raise ValueError("the closed form is for K = 2")
        return _two(gram)
    if method == "exact":
        return _exact(gram)
    if method == "frank_wolfe":
        return _frank_wolfe(gram, max_iter, tol)
    raise ValueError(f"unknown method {method!r}")


def _two(gram: Tensor) -> Tensor:
    m11, m12, m22 = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    denom = m11 + m22 - 2 * m12  # ||g1 - g2||^2
    scale = torch.maximum(m11, m22).clamp_min(_EPS)
    identical = denom <= 1e-12 * scale
    w1 = torch.where(identical, 0.5, ((m22 - m12) / denom.clamp_min(_EPS)).clamp(0.0, 1.0))
    return torch.stack([w1, 1.0 - w1], dim=-1)


def _faces(k: int, device: torch.device) -> Tensor:
    """All non-empty supports (S, K) as 0/1 rows, largest first (the tie-break order)."""
    rows = [s for r in range(k, 0, -1) for s in itertools.combinations(range(k), r)]
    out = torch.zeros(len(rows), k, dtype=torch.float64, device=device)
    for i, s in enumerate(rows):
        out[i, list(s)] = 1.0
    return out


def _exact(gram: Tensor) -> Tensor:
    b, k, _ = gram.shape
    faces = _faces(k, gram.device)  # (S, K)
    n = faces.shape[0]
    on = faces[:, :, None] * faces[:, None, :]  # (S, K, K) 1 inside the face block
    # KKT matrix per (face, problem): [[M_SS (identity rows off the face), 1_S], [1_S^T, 0]]
    kkt = torch.zeros(n, b, k + 1, k + 1, dtype=gram.dtype, device=gram.device)
    kkt[:, :, :k, :k] = on[:, None] * gram[None] + torch.diag_embed(1.0 - faces)[:, None]
    kkt[:, :, :k, k] = faces[:, None]
    kkt[:, :, k, :k] = faces[:, None]
    rhs = torch.zeros(k + 1, 1, dtype=gram.dtype, device=gram.device)
    rhs[k] = 1.0
    w = (torch.linalg.pinv(kkt, hermitian=True) @ rhs)[..., :k, 0]  # (S, B, K)
    w = w * faces[:, None]
    scale = gram.diagonal(dim1=1, dim2=2).amax(-1).clamp_min(_EPS)  # (B,)
    feasible = (w >= -1e-9).all(-1) & ((w.sum(-1) - 1).abs() <= 1e-7)  # (S, B)
    w = w.clamp_min(0)
    w = w / w.sum(-1, keepdim=True).clamp_min(_EPS)
    value = torch.einsum("sbi,bij,sbj->sb", w, gram, w)  # (S, B)
    value = torch.where(feasible, value, torch.inf)
    best = value.amin(0)  # (B,)
    # ties (within round-off of the best) go to the first, i.e. largest, face
    near = value <= best + 1e-9 * scale + 1e-9 * best.abs()
    first = near.to(torch.int64).argmax(0)  # (B,)
    return w[first, torch.arange(b, device=gram.device)]


def _frank_wolfe(gram: Tensor, max_iter: int, tol: float) -> Tensor:
    """Pairwise Frank-Wolfe: move mass from the worst active vertex to the best one.

    Plain FW zig-zags at O(1/t) when the optimum is on a face; the pairwise variant converges
    linearly on the simplex, with the same exact line search and no projection.
    """
    b, k, _ = gram.shape
    diag = gram.diagonal(dim1=1, dim2=2)
    w = torch.full((b, k), 1.0 / k, dtype=gram.dtype, device=gram.device)
    scale = diag.amax(-1).clamp_min(_EPS)
    rows = torch.arange(b, device=gram.device)
    for it in range(max_iter):
        mw = (gram @ w.unsqueeze(-1)).squeeze(-1)  # (B, K): g_k . u, u = G^T w
        t = mw.argmin(-1)  # toward: best vertex of the linearization
        a = torch.where(w > 0, mw, -torch.inf).argmax(-1)  # away: worst vertex in the support
        gap = (w * mw).sum(-1) - mw[rows, t]  # Frank-Wolfe duality gap (>= 0)
        if bool((gap <= tol * scale).all()):
            log.debug("frank-wolfe converged after %d iterations", it)
            break
        # exact line search on ||u + gamma (g_t - g_a)||^2, gamma in [0, w_a]
        curvature = gram[rows, t, t] + gram[rows, a, a] - 2 * gram[rows, t, a]
        gamma = ((mw[rows, a] - mw[rows, t]) / curvature.clamp_min(_EPS)).clamp_min(0.0)
        gamma = torch.minimum(gamma, w[rows, a])
        gamma = torch.where(gap <= tol * scale, 0.0, gamma)
        w[rows, a] -= gamma
        w[rows, t] += gamma
    return w.clamp_min(0)
