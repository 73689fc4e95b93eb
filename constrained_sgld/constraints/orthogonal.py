"""Orthogonal matrices (the Stiefel manifold), with scale ``s``.

A tall ``W`` (n x k, n >= k) satisfies ``W^T W = s^2 I``; a wide one ``W W^T = s^2 I``. A conv
weight ``(out, in, *kernel)`` is the matrix ``(out, in * prod(kernel))``; ``batch_dims=b`` makes the
leading ``b`` dims a batch of independent matrices; ``blocks=m`` splits the rows into ``m`` equal
stacked matrices, each orthogonal on its own (a fused projection: attention's ``(3d, d)`` query, key
and value weights as three ``d x d`` blocks). Every operation works on the tall orientation:
a wide matrix is handled as its transpose (a view), so only the small k x k Gram matrix is formed.

On the unit-scale tall matrix ``X = W / s``:

- tangent space at X:      ``V - X sym(X^T V)``  with ``sym(A) = (A + A^T) / 2``
- projection:              ``polar(Y) = U V^T`` from the thin SVD ``Y = U S V^T``
- SHAKE position update:   from a feasible ``X`` and a proposal ``Y``, find symmetric ``L`` with
  ``(Y + X L)^T (Y + X L) = I`` (the correction lies along the normal space at the old point).
  Writing ``P = Y^T Y``, ``Q = X^T Y``, ``A = X^T X`` (all k x k; ``A = I`` to tolerance), the
  residual is ``F(L) = P + Q^T L + L Q + L A L - I``, solved by Newton steps with the Jacobian inverted to
  first order (see ``shake_correct``). Each iteration costs only k x k products; it stops once
  ``max |F| <= eps^(3/4)`` of the dtype and falls back to ``polar(Y)`` for any matrix that has not
  converged after ``max_iter`` iterations (very large steps). In a sync-free step
  (`StepContext`) it runs a fixed, dtype-aware number of
  iterations instead and rejects the move of a matrix that has not converged (no host read).
- square matrices (the orthogonal group, ``n = k``) move by the Cayley map in the body frame instead:
  a tangent vector at ``X`` is ``X A`` with ``A`` skew, ``A = skew(X^T V)``, and the drift is
  ``X <- X cay(t A)``, ``cay(S) = (I - S/2)^-1 (I + S/2) = 2 (I - S/2)^-1 - I``, with ``A`` (the
  body-frame velocity) unchanged. One linear solve and no SHAKE iterations: on square matrices
  SHAKE's k x k products are full n x n products, a dozen per drift. ``cay`` is exactly
  orthogonal, and the flow is reversible (``cay(-S) = cay(S)^-1``) and preserves the measure
  ``dX dA`` (right multiplication by a fixed rotation preserves Haar measure), so the splitting's
  stationary-law argument is unchanged; ``cay(tA)`` differs from the geodesic ``exp(tA)`` by
  ``O(t^3)``, which changes the discrete chain as the circle's Cayley angle does. Rounding in the
  solve accumulates from step to step (about ``1e-6 sqrt(steps)`` in float32), so a matrix whose
  orthogonality, measured by a fixed probe vector, has drifted past a tenth of the tolerance gets
  one Newton-Schulz step ``X (3 I - X^T X) / 2`` (in a sync-free step: every time, no host read).
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import geotorch.so
import torch
from torch import Tensor

from .base import DEFAULT_CONTEXT, Constraint, Packing, StepContext, check_positive, register_constraint, scaled_forces
from .spectral import stiefel_steepest


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-2, -1))


def polar(y: Tensor) -> Tensor:
    """Nearest matrix with orthonormal columns (tall ``y``), batched: ``U V^T`` of the thin SVD.
    Half-precision input is decomposed in float32 (there is no half SVD kernel on the CPU) and
    the result cast back."""
    if y.dtype in (torch.float16, torch.bfloat16):
        return polar(y.float()).to(y.dtype)
    u, _, vh = torch.linalg.svd(y, full_matrices=False)
    return u @ vh


def shake_tolerance(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps ** 0.75


def sync_free_iterations(dtype: torch.dtype) -> int:
    """SHAKE iterations run without a convergence test: enough to reach the tolerance from a step
    of spectral norm up to about 0.6 (float32) or 0.3 (float64); see docs/performance.md."""
    return 6 if torch.finfo(dtype).eps < 1e-10 else 4


def _shake_iterate(x: Tensor, y: Tensor, iterations: int, check_from: Optional[int]) -> Tuple[Tensor, Tensor, bool]:
    """Newton iterations on ``F(L) = 0``; returns ``(L, max |F| per matrix, converged)``, where
    ``max |F|`` is measured before the last update (so it bounds the result's residual). With
    ``check_from``, stops early once every matrix has converged (a host read per check; then
    ``converged`` is True); without, runs them all and ``converged`` is False (unknown).

    ``A = X^T X`` is taken as ``I``: ``x`` is feasible to the set's tolerance, and the error this
    makes in ``F`` is ``L (A - I) L``, second order in the (small) correction, so the new point's
    violation is at most the tolerance plus ``|L|^2`` times the old one (no accumulation). That
    saves one n x k x k product per call and one k x k product per iteration.
    """
    p = y.transpose(-2, -1) @ y
    q = x.transpose(-2, -1) @ y
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    tol = shake_tolerance(y.dtype)
    # iteration 0 at L = 0: F = P - I and E = Q - I, no products needed
    residual = p - eye
    fe = residual @ (q - eye)
    lam = 0.25 * (fe + fe.transpose(-2, -1)) - 0.5 * residual
    err = residual.abs().amax(dim=(-2, -1))
    for it in range(1, iterations + 1):
        lq = lam @ q
        residual = p + lq.transpose(-2, -1) + lq + lam @ lam - eye
        err = residual.abs().amax(dim=(-2, -1))
        converged = check_from is not None and it >= check_from and bool((err <= tol).all())
        # update from the residual just computed, also after the test has passed: one k x k product
        # takes the residual from just under the tolerance to about its square (a violation near
        # float rounding rather than near the tolerance, for a fraction of a Gram product)
        fe = residual @ (q + lam - eye)
        lam = lam - 0.5 * residual + 0.25 * (fe + fe.transpose(-2, -1))
        if converged:
            return lam, err, True
    return lam, err, False


def shake_correct(x: Tensor, y: Tensor, max_iter: int = 12) -> Tensor:
    """Bring the proposal ``y`` back onto the Stiefel manifold along the normal space at ``x``.

    ``x`` and ``y`` are (batches of) tall matrices with unit scale; ``x`` is (nearly) feasible.
    Newton's method on ``F(L) = 0`` needs the Jacobian ``D -> M^T D + D M`` with ``M = Q + A L``
    (= I + E, E small); its inverse is applied to first order in E:
    ``D = -F/2 + (E^T F + F E) / 4``, so the error shrinks like ``|step|^2`` per iteration.
    Convergence is checked from the first iteration on (one host read in the common case);
    matrices still unconverged after ``max_iter`` get the exact polar projection of ``y``.
    """
    lam, err, converged = _shake_iterate(x, y, max_iter, check_from=1)
    out = y + x @ lam
    if converged:
        return out
    bad = ~(err <= shake_tolerance(y.dtype))  # NaN counts as not converged
    if out.ndim == 2:
        return polar(y)
    out = out.clone()
    out[bad] = polar(y[bad])
    return out


def shake_correct_sync_free(x: Tensor, y: Tensor, max_iter: int = 12) -> Tuple[Tensor, Tensor]:
    """`shake_correct()` without host reads: a fixed number of iterations
    (`sync_free_iterations()`, at most ``max_iter``), and a matrix that has not converged is
    not moved (``x`` is returned for it: the move is rejected). Returns ``(new, rejected)``, with
    ``rejected`` a boolean tensor per matrix."""
    lam, err, _ = _shake_iterate(x, y, min(max_iter, sync_free_iterations(y.dtype)), check_from=None)
    rejected = ~(err <= shake_tolerance(y.dtype))
    return torch.where(rejected[..., None, None], x, y + x @ lam), rejected


def _shake(x: Tensor, y: Tensor, max_iter: int, ctx: StepContext) -> Tensor:
    """SHAKE as the step asks: with host reads and the polar fallback, or sync-free."""
    if not ctx.sync_free:
        return shake_correct(x, y, max_iter)
    new, rejected = shake_correct_sync_free(x, y, max_iter)
    ctx.reject(rejected.sum())
    return new


def _skew(a: Tensor) -> Tensor:
    return torch.sub(a, a.transpose(-2, -1)).mul_(0.5)  # one pass fewer than 0.5 * (a - a^T)


def cayley_drift(x: Tensor, a: Tensor, t: float) -> Tensor:
    """``x cay(t a)`` for (batches of) square orthogonal ``x`` and skew ``a``: with
    ``cay(S) = 2 (I - S/2)^-1 - I``, ``x (I - S/2)^-1`` is the solution ``Y`` of
    ``(I + S/2) Y^T = x^T`` (``(I - S/2)^T = I + S/2`` for skew ``S``): one solve, no product.
    ``I + S/2`` is invertible for every real skew ``S`` (its eigenvalues are ``1 + i lambda``)."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    # I + S/2 is passed as the transpose of I - S/2 (a view): in the column-major layout LAPACK
    # factorises, so no copy; solve_ex without its error check: no host read (the matrix is never
    # singular, see above)
    lhs = torch.add(eye, a, alpha=-0.5 * t).transpose(-2, -1)
    y_t = torch.linalg.solve_ex(lhs, x.transpose(-2, -1), check_errors=False)[0]
    return y_t.transpose(-2, -1).mul_(2.0).sub_(x)


#: the Cayley map's routes: "iterative" (matrix products only, `cayley_iterative()`, with the
#: solve where a step is too large for it) and "solve" (one LU solve, `cayley_drift()`); "auto" takes
#: the route measured faster on the device type (docs/performance.md, row 12). The GPU entry is
#: reasoned, not measured: a batched LU there is far dearer than products.
CAYLEY_ROUTE_BY_DEVICE = {"cpu": "iterative", "cuda": "iterative"}
CAYLEY_ROUTES = ("auto", "iterative", "solve")


def cayley_map_tolerance(dtype: torch.dtype) -> float:
    """How close the iterative map must come to the exact ``X cay(S)`` (max entry): the dtype's
    rounding, so that the route changes nothing the solve's own rounding does not."""
    return torch.finfo(dtype).eps


#: the most products "auto" spends on one map before it takes the solve instead (on this
#: project's CPU one LU solve of a 256 x 256 map costs about 7 products: docs/performance.md)
AUTO_MAX_PRODUCTS = 6
#: the most products ``cayley="iterative"`` spends (it takes the solve only where the iteration
#: would not converge, or past this)
ITERATIVE_MAX_PRODUCTS = 60


def cayley_products(bound: float, dtype: torch.dtype, max_products: int = AUTO_MAX_PRODUCTS) -> Optional[int]:
    """Products `cayley_iterative()` needs to bring its error below `cayley_map_tolerance()` for a
    step ``S`` of norm at most ``bound`` (its error after ``k`` products is at most
    ``(|S| / 2)^k |S| / (1 - |S| / 2)``); None where it needs more than ``max_products`` or does not
    converge (``|S| / 2 >= 1``)."""
    q = 0.5 * bound
    if not q < 1.0:  # NaN too
        return None
    if bound == 0:
        return 1
    target = cayley_map_tolerance(dtype) * (1.0 - q) / bound
    k = 1
    while q**k > target:
        k += 1
        if k > max_products:
            return None
    return k


def cayley_sync_free_products(dtype: torch.dtype) -> int:
    """Products the sync-free step runs without a test: enough from a step of norm up to about
    0.06 (float32: 5 products) or 0.03 (float64: 10). A larger step's move is rejected."""
    return 5 if torch.finfo(dtype).eps > 1e-10 else 10


def cayley_iterative(x: Tensor, a: Tensor, t: float, products: int) -> Tuple[Tensor, Tensor]:
    """``x cay(t a)`` (batched square orthogonal ``x``, skew ``a``) with ``products`` matrix
    products and no solve: ``Y = x cay(S)``, ``S = t a``, is the fixed point of
    ``Y = x + (x + Y) S / 2`` (from ``Y (I - S/2) = x (I + S/2)``), and the iteration
    ``Y_{j+1} = C + Y_j S / 2`` with ``C = x + x S / 2`` contracts its error by ``S / 2`` per
    product, from ``Y_1 = x + x S`` (the first product, ``x S``, serves ``C`` too). Converged, it
    is the Cayley map itself, reversible and volume-preserving as the solve's (Li, Fuxin & Todorovic
    2020 iterate the same relation for their retraction). Returns ``(Y, change)``: ``change`` is
    the max entry of the last update per matrix (its error is at most that times
    ``|S/2| / (1 - |S/2|)``)."""
    h = 0.5 * t
    xs = x @ a
    y = torch.add(x, xs, alpha=t)
    change = xs.abs().amax(dim=(-2, -1)).mul_(abs(t))
    if products > 1:
        c = torch.add(x, xs, alpha=h)
        for _ in range(products - 1):
            new = torch.add(c, y @ a, alpha=h)
            change = (new - y).abs().amax(dim=(-2, -1))
            y = new
    return y, change


def _twice_body_force(x: Tensor, g: Tensor) -> Tensor:
    """``2 skew(X^T g)`` (batched), as ``a - a^T`` with ``a = X^T g``: exactly skew, one product. These
    are the body-frame coordinates of the force ``g``, doubled so that the caller's scale takes the
    half in the pass it makes anyway."""
    a = x.transpose(-2, -1) @ g
    return torch.sub(a, a.transpose(-2, -1))


def _cayley_pair(x: Tensor, b: Tensor, u: float, c: float) -> Tensor:
    """``x cay(u b) cay(u c b)``, the two drifts of ``A O A`` without noise, with one solve: the
    two factors commute, so their product is ``P^-1 P^T`` with ``P = (I - u b / 2)(I - u c b / 2)
    = I - a b + e b^2`` (``a = u (1 + c) / 2``, ``e = u^2 c / 4``; ``P^T = I + a b + e b^2`` for
    skew ``b``), and ``x P^-1`` solves ``P^T Y^T = x^T``. One product for ``b^2`` and one for
    ``Y P^T`` replace the second solve."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    a, e = 0.5 * u * (1.0 + c), 0.25 * u * u * c
    # P^T as the transpose of P (a view, column-major for LAPACK: no copy; see cayley_drift)
    p_t = torch.add(eye, b, alpha=-a).add_(b @ b, alpha=e).transpose(-2, -1)
    y = torch.linalg.solve_ex(p_t, x.transpose(-2, -1), check_errors=False)[0].transpose(-2, -1)
    return y @ p_t


def _probe(n: int, like: Tensor) -> Tensor:
    """A fixed unit vector with no special direction (a deterministic function of ``n``), so
    that the orthogonality check is reproducible and a resumed run corrects when the original did."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    v = torch.cos(i * 2.399963229728653) + 0.5 * torch.sin(i * 0.7548776662466927)  # golden-angle phases
    return (v / v.norm()).to(dtype=like.dtype, device=like.device)


def reorthonormalise(x: Tensor, ctx: StepContext) -> Tensor:
    """``x`` with the rounding the Cayley drifts accumulated taken out: one Newton-Schulz step
    ``x (3 I - x^T x) / 2`` (the error ``E = x^T x - I`` goes to ``O(E^2)``) for the matrices whose
    ``|x^T x z - z|``, with the fixed probe ``z``, exceeds a tenth of the set's tolerance. Two
    matrix-vector products and one host read decide it; sync-free, every matrix is corrected."""
    if not ctx.sync_free:
        z = _probe(x.shape[-1], x).unsqueeze(-1)
        drift = ((x.transpose(-2, -1) @ (x @ z)) - z).abs().amax()
        if not bool(drift > 0.1 * shake_tolerance(x.dtype)):
            return x
    return torch.matmul(x, x.transpose(-2, -1) @ x).mul_(-0.5).add_(x, alpha=1.5)


def _needs_copy(piece: Tensor, target: Tensor) -> bool:
    """Whether ``piece`` must be copied into ``target``: not when it is a view of the same memory.
    Under torch.compile always (dynamo cannot compare data pointers, and a graph break there would
    make it compile every helper call apart, guarded on each parameter; the functional graph makes
    the copy of a tensor onto itself free)."""
    return torch.compiler.is_compiling() or piece.data_ptr() != target.data_ptr()


@register_constraint("orthogonal")
class Orthogonal(Constraint):
    """``W^T W = scale^2 I`` (tall) or ``W W^T = scale^2 I`` (wide), per matrix.

    Args:
        scale: the singular value ``s`` of every matrix (default 1).
        batch_dims: leading dims that index independent matrices (default 0).
        blocks: the number of equal matrices stacked along the first dim past ``batch_dims``, each
            constrained on its own (default 1: the whole matrix). A fused query-key-value weight
            ``(3d, d)`` with ``blocks=3`` has three orthogonal ``d x d`` blocks; without it, its
            ``d`` columns would be orthonormal as one tall matrix, which leaves each block free to
            be far from orthogonal.
        max_iter: cap on the SHAKE iterations before the polar fallback.
        cayley: how square matrices take the Cayley map (their route): ``"iterative"`` with matrix
            products only (a fixed-point iteration run to the dtype's rounding; the solve only
            where it would not converge), ``"solve"`` with one LU solve, ``"auto"`` (default) the
            route measured faster on the device type (`CAYLEY_ROUTE_BY_DEVICE`), with the solve
            for any step that would need more than `AUTO_MAX_PRODUCTS` products, and in a
            sync-free step. The map is the same on every route, to rounding.
        transposed: the weight is stored as ``(in, out)``, the transpose of ``nn.Linear``'s
            ``(out, in)``: Hugging Face's ``Conv1D`` (GPT-2's ``c_attn`` is ``(d, 3d)``) and any
            ``x @ W`` layer. The set then acts on ``W^T``: ``blocks`` splits the output *columns*
            (GPT-2's query, key and value) and the orientation is the ``(out, in)`` matrix's.
            Matrices only (``batch_dims + 2`` dims). Default False.
    """

    def __init__(self, *, scale: float = 1.0, batch_dims: int = 0, blocks: int = 1, max_iter: int = 12, cayley: str = "auto",
                 transposed: bool = False):
        if not isinstance(transposed, bool):
            raise ValueError(f"orthogonal: transposed must be True or False, got {transposed!r}")
        self.transposed = transposed
        self.scale = check_positive(scale, "scale", "orthogonal")
        if cayley not in CAYLEY_ROUTES:
            raise ValueError(f"orthogonal: cayley must be one of {', '.join(map(repr, CAYLEY_ROUTES))}, got {cayley!r}")
        self.cayley = cayley
        if not isinstance(batch_dims, int) or isinstance(batch_dims, bool) or batch_dims < 0:
            raise ValueError(f"orthogonal: batch_dims must be an int >= 0, got {batch_dims!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"orthogonal: max_iter must be an int >= 1, got {max_iter!r}")
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            raise ValueError(f"orthogonal: blocks must be an int >= 1, got {blocks!r}")
        self.batch_dims = batch_dims
        self.blocks = blocks
        self.max_iter = max_iter

    @property
    def _batch(self) -> int:
        """The batch dims of the blocked view (`_blocked()`): one more where ``blocks`` splits."""
        return self.batch_dims + (self.blocks > 1)

    def _oriented(self, t: Tensor) -> Tensor:
        """``t`` as an ``(out, in)`` matrix past ``batch_dims``: its transpose where ``transposed``
        (a view)."""
        return t.transpose(self.batch_dims, self.batch_dims + 1) if self.transposed else t

    def _stored_shape(self, like: Tensor) -> List[int]:
        """``like``'s shape in the ``(out, in)`` orientation (`_oriented()`)."""
        shape = list(like.shape)
        if self.transposed:
            b = self.batch_dims
            shape[b], shape[b + 1] = shape[b + 1], shape[b]
        return shape

    def _blocked(self, t: Tensor) -> Tensor:
        """``t`` (oriented) with the dim past ``batch_dims`` split into ``(blocks, rows / blocks)``
        (a view where the layout allows)."""
        t = self._oriented(t)
        if self.blocks == 1:
            return t
        b = self.batch_dims
        return t.reshape(*t.shape[:b], self.blocks, t.shape[b] // self.blocks, *t.shape[b + 1 :])

    # -- shapes: every tensor is viewed as (batch, n, k) with n >= k
    def check(self, p: Tensor, name: str) -> None:
        if p.ndim < self.batch_dims + 2:
            raise ValueError(
                f"parameter {name!r} of shape {tuple(p.shape)} cannot be 'orthogonal': it needs at "
                f"least 2 dims beyond batch_dims={self.batch_dims} (a matrix or a conv weight); "
                f"use 'sphere' or None for vectors such as biases"
            )
        if p.numel() == 0:
            raise ValueError(f"parameter {name!r} is empty (shape {tuple(p.shape)}); 'orthogonal' needs at least one entry")
        if self.transposed and p.ndim != self.batch_dims + 2:
            raise ValueError(
                f"parameter {name!r} of shape {tuple(p.shape)}: 'orthogonal' with transposed=True takes a matrix "
                f"stored as (in, out) (Hugging Face's Conv1D), {self.batch_dims + 2} dims with batch_dims={self.batch_dims}"
            )
        out_dim = self.batch_dims + (1 if self.transposed else 0)
        if p.shape[out_dim] % self.blocks:
            layout = "columns (the outputs of an (in, out) weight, transposed=True)" if self.transposed else "rows (the outputs of an (out, in) weight)"
            raise ValueError(
                f"parameter {name!r} of shape {tuple(p.shape)} cannot be split into blocks={self.blocks} "
                f"equal matrices along its {layout}: dim {out_dim} has {p.shape[out_dim]}. A weight stored as "
                f"(in, out), such as Hugging Face's Conv1D (GPT-2's c_attn is (d, 3d)), needs transposed=True"
            )
        if self.blocks > 1:
            shape = self._stored_shape(p)
            rows, cols = shape[self.batch_dims] // self.blocks, p[(0,) * self.batch_dims].numel() // shape[self.batch_dims]
            if rows < cols:
                # fused projections stack square (or tall) blocks along their outputs: wide blocks
                # mean the split runs along the wrong axis, which nothing else would reveal
                other = "False: (out, in), as nn.Linear" if self.transposed else "True: (in, out), as Hugging Face's Conv1D"
                warnings.warn(
                    f"parameter {name!r} of shape {tuple(p.shape)}: blocks={self.blocks} with transposed={self.transposed} "
                    f"splits it into wide {rows} x {cols} blocks, each with orthonormal rows. A fused projection's blocks "
                    f"(query, key, value) are square: if the weight is stored the other way, pass transposed={other}",
                    UserWarning, stacklevel=2,
                )

    def _matrix(self, t: Tensor) -> Tensor:
        """View ``t`` as a batch of tall matrices ``(..., n, k)``, n >= k (a wide one transposed)."""
        b = self._batch
        t = self._blocked(t)
        m = t.reshape(*t.shape[: b + 1], -1)
        if m.shape[-2] < m.shape[-1]:
            m = m.transpose(-2, -1)
        return m

    def _unmatrix(self, m: Tensor, like: Tensor) -> Tensor:
        shape = self._stored_shape(like)
        rows = shape[self.batch_dims] // self.blocks
        if m.shape[-2] != rows:  # was wide
            m = m.transpose(-2, -1)
        return self._oriented(m.reshape(shape))

    def block_mean(self, p: Tensor, values: Tensor) -> Tensor:
        """One block per matrix (the dims past ``batch_dims``, and per stacked block with
        ``blocks``): the constraint couples a whole matrix. With ``blocks``, the block's value is
        repeated over its rows (shape ``(..., rows, 1, ...)``, broadcastable to ``p``)."""
        b = self.batch_dims
        if self.blocks == 1:
            return values.mean(dim=tuple(range(b, values.ndim)), keepdim=True)
        split = self._blocked(values)
        means = split.mean(dim=tuple(range(b + 1, split.ndim)), keepdim=True)
        oriented = self._oriented(values)
        out = means.expand(*split.shape[: b + 2], *means.shape[b + 2 :]).reshape(*oriented.shape[: b + 1], *means.shape[b + 2 :])
        return self._oriented(out)  # transposed: (..., 1, columns), broadcastable to the (in, out) weight

    def spectral_check(self, p: Tensor, name: str) -> None:
        pass

    def spectral_direction(self, p: Tensor, update: Tensor, step) -> Tensor:
        """Per matrix (per block with ``blocks``): ``"project"``, Muon's ``msign(update)`` (the
        scheme then takes its tangent part and retracts); ``"steepest"``, the spectral-norm steepest
        direction on the set (`stiefel_steepest()`: the closed form for square matrices). Times
        Muon's shape factor of the (block) matrix as stored."""
        m = self._matrix(update)
        if step.variant == "steepest":
            d = stiefel_steepest(self._matrix(p) / self.scale, m, step.msign, step.dual_steps, step.dual_lr)
        else:
            d = step.msign(m)
        b = self.batch_dims
        shape = self._stored_shape(p)
        rows = shape[b] // self.blocks
        return self._unmatrix(d, p).mul_(step.scale(rows, p[(0,) * b].numel() // shape[b]))

    def tangent_dim(self, p: Tensor) -> int:
        m = self._matrix(p)
        n, k = m.shape[-2:]
        return (m.numel() // (n * k)) * (n * k - k * (k + 1) // 2)  # nk - k(k+1)/2 per matrix

    # -- set operations
    def project(self, p: Tensor) -> Tensor:
        return self._unmatrix(polar(self._matrix(p)) * self.scale, p)

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return self._unmatrix(self._tangent_unit(self._matrix(p) / self.scale, self._matrix(v)), v)

    def violation(self, p: Tensor) -> Tensor:
        x = self._matrix(p) / self.scale
        gram = x.transpose(-2, -1) @ x
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return (gram - eye).abs().amax()

    def tolerance(self, dtype: torch.dtype) -> float:
        return 10 * shake_tolerance(dtype)

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Haar-distributed (geotorch's sampler; determinant +1 for square matrices), times ``scale``."""
        # drawn in float32 at least: there is no half-precision QR on the CPU
        work = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        m = torch.empty(self._matrix(p).shape, dtype=work, device=p.device)
        geotorch.so.uniform_init_(m)
        m = m.to(p.dtype)
        p.copy_(self._unmatrix(m * self.scale, p))
        return p

    # -- dynamics: SHAKE from the previous feasible point instead of a fresh polar projection
    def _tangent_unit(self, x: Tensor, v: Tensor) -> Tensor:
        """Tangent projection on unit-scale tall matrices (any leading batch dims)."""
        return v - x @ _sym(x.transpose(-2, -1) @ v)

    couples = "matrix"

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self.retract_many_([p], [step], [state])

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        return self.drift_many_([p], [velocity], t, [state])[0]

    # -- multi-tensor twins: matrices are stacked and run as one batch. Small tall matrices with the
    # same column count share a batch even when their row counts differ: they are padded with zero
    # rows, which is exact (zero rows change neither W^T W, nor the tangent projection, nor the SHAKE
    # correction, and stay zero) and trades a little arithmetic for far fewer kernel launches.
    SMALL = 1 << 16  #: matrices with at most this many entries are padded into shared batches
    #: on the CPU, square matrices with at least this many entries run one by one: one such product
    #: keeps the BLAS busy, and batching them only adds packing copies (a tenth of the step on
    #: deep-mlp's thirty 256 x 256 matrices); on a GPU batching keeps the device busy, so they share
    ALONE = 1 << 14

    def _buckets(self, tensors: List[Tensor]) -> List[Tuple[List[int], int]]:
        """Groups of indices that run as one batch, each with its (padded) row count."""
        buckets: Dict[tuple, List[int]] = {}
        for i, t in enumerate(tensors):
            m = self._matrix(t)
            small = self._batch == 0 and m.numel() <= self.SMALL
            # a square matrix never shares a batch with tall ones: its tangent vectors are stored
            # in the body frame (see _body_frame), theirs in the ambient space
            key = (m.shape[-1], self._body_frame(t), t.dtype, t.device) if small else (tuple(m.shape), t.dtype, t.device)
            if m.shape[-2] == m.shape[-1] and m.numel() >= self.ALONE and t.device.type == "cpu":
                key = ("alone", i)
            buckets.setdefault(key, []).append(i)
        return [(idx, max(self._matrix(tensors[i]).shape[-2] for i in idx)) for idx in buckets.values()]

    def _stack(self, tensors: List[Tensor], idx: List[int], rows: int) -> Tensor:
        mats = [self._matrix(tensors[i]) for i in idx]
        if len(mats) == 1:
            return mats[0].unsqueeze(0)
        if all(m.shape[-2] == rows for m in mats):
            return torch.stack(mats)
        out = mats[0].new_zeros((len(mats), *mats[0].shape[:-2], rows, mats[0].shape[-1]))
        for j, m in enumerate(mats):
            out[j][..., : m.shape[-2], :].copy_(m)
        return out

    def _unstack(self, batch: Tensor, j: int, like: Tensor) -> Tensor:
        """Item ``j`` of a batch, without its padding rows, shaped like ``like``."""
        rows = self._matrix(like).shape[-2]
        return self._unmatrix(batch[j][..., :rows, :], like)

    def packing(self, params: List[Tensor]) -> Optional[Packing]:
        """The group's matrices packed into its batches once per step (see ``Constraint.packing``):
        the packed tensors are ``(batch, ..., rows, k)`` tall stacks, handled by the same set with
        one more batch dim."""
        buckets = self._buckets(params)
        if all(len(idx) == 1 for idx, _ in buckets):
            return None  # every matrix is its own batch already: packing would only copy

        def pack(tensors: List[Tensor]) -> List[Tensor]:
            return [self._stack(tensors, idx, rows) for idx, rows in buckets]

        def unpack_(packed: List[Tensor], targets: List[Tensor]) -> None:
            for batch, (idx, _) in zip(packed, buckets):
                for j, i in enumerate(idx):
                    piece = self._unstack(batch, j, targets[i])
                    if _needs_copy(piece, targets[i]):  # a lone matrix's "stack" is a view
                        targets[i].copy_(piece)

        # the packed stacks are already blocked: one batch dim more and no split
        # (oriented too: the inner set is never transposed)
        inner = type(self)(scale=self.scale, batch_dims=self._batch + 1, max_iter=self.max_iter, cayley=self.cayley)  # a subclass keeps its overrides
        return Packing(inner, pack, unpack_)

    def _unit(self, m: Tensor) -> Tensor:
        """``m / scale`` (no new tensor at scale 1)."""
        return m if self.scale == 1 else m / self.scale

    #: dtypes the Cayley route runs in (torch.linalg.solve has no half-precision CPU kernel)
    CAYLEY_DTYPES = (torch.float32, torch.float64)

    #: the tangent representation's version (see ``Constraint.tangent_version``): 2 stores a square
    #: matrix's tangent vectors in the body frame (1 stored every one in the ambient space)
    tangent_version = 2

    def _body_frame(self, t: Tensor) -> bool:
        """Whether the tangent vectors at ``t`` are stored in the body frame: square matrices (the
        orthogonal group) in a dtype of the Cayley route. A tangent vector ``V = X A`` at ``X`` is then
        held as its skew ``A = X^T V`` (shaped like the parameter), so that the Cayley drift needs no
        product: it moves ``X`` to ``X cay(t A)`` and leaves ``A`` as it is."""
        m = self._matrix(t)
        return m.shape[-2] == m.shape[-1] and t.dtype in self.CAYLEY_DTYPES

    def _cayley(self, tensors: List[Tensor], idx: List[int], rows: int) -> bool:
        """The route of a bucket: the Cayley map in the body frame for square matrices, SHAKE
        otherwise (tall matrices: there SHAKE's products are k x k, cheaper than an n x n solve).
        Square and tall matrices never share a bucket, so its first matrix decides."""
        return self._body_frame(tensors[idx[0]])

    def upgrade_tangent(self, p: Tensor, v: Tensor, version: int, state: Dict[str, Tensor]) -> Tensor:
        """Version 1 stored a square matrix's tangent vectors in the ambient space: their body-frame
        coordinates are ``skew(X^T V)`` (the tangent force of ``V``)."""
        if version < 2 and self._body_frame(p):
            return self.tangent_force(p, v, state)
        return v

    def _tangent_many(self, params: List[Tensor], vectors: List[Tensor], std: Optional[float]) -> List[Tensor]:
        """Tangent vectors, as stored, of ambient forces (``std`` None) or of standard normal noise
        times ``std``. In the body frame a force ``F`` is ``skew(X^T F)``, and the noise is
        ``std skew(xi)``: ``X^T xi`` has the law of ``xi`` (``X`` is orthogonal and ``xi``
        independent of it), so its skew part is the isotropic Gaussian on the skew matrices in the
        Frobenius metric, which is the metric of ``|X A| = |A|``, without the product."""
        out: List[Optional[Tensor]] = [None] * len(params)
        for idx, rows in self._buckets(params):
            v = self._stack(vectors, idx, rows)
            if self._cayley(params, idx, rows):
                if std is None:
                    t = _skew(self._unit(self._stack(params, idx, rows)).transpose(-2, -1) @ v)
                else:
                    t = _skew(v).mul_(std)
            else:
                t = self._tangent_unit(self._unit(self._stack(params, idx, rows)), v if std in (None, 1) else v * std)
            for j, i in enumerate(idx):
                out[i] = self._unstack(t, j, params[i])
        return out  # type: ignore[return-value]

    def tangent_force(self, p, force, state):
        return self._tangent_many([p], [force], None)[0]

    def tangent_noise(self, p, xi, std, state):
        return self._tangent_many([p], [xi], std)[0]

    def tangent_force_many(self, params, forces, states):
        return self._tangent_many(params, forces, None)

    def tangent_noise_many(self, params, xis, std, states):
        return self._tangent_many(params, xis, std)

    def kick_(self, params, momenta, grads, scale, weight_decay, states):
        """B. In the body frame ``A += scale skew(X^T g)``: one product and two passes (weight
        decay's force ``X`` is normal, ``skew(X^T X) = 0``: it drops out). Tall matrices as the
        default (the tangent projection of the force)."""
        square, rest = self._split_routes(params)
        for idx, rows in square:
            body = self._stack(momenta, idx, rows)
            x = self._unit(self._stack(params, idx, rows))
            body.add_(_twice_body_force(x, self._stack(grads, idx, rows)), alpha=0.5 * scale)
            self._write_body(momenta, idx, body, params)
        if rest:
            pick = lambda xs: [xs[i] for i in rest]  # noqa: E731
            super().kick_(pick(params), pick(momenta), pick(grads), scale, weight_decay, pick(states))

    def _split_routes(self, params: List[Tensor]) -> Tuple[List[Tuple[List[int], int]], List[int]]:
        """The buckets of the Cayley route (square matrices, body frame) and, sorted, the indices of
        the other parameters, which take the default (SHAKE/RATTLE) composition."""
        square: List[Tuple[List[int], int]] = []
        rest: List[int] = []
        for idx, rows in self._buckets(params):
            if self._cayley(params, idx, rows):
                square.append((idx, rows))
            else:
                rest += idx
        rest.sort()
        return square, rest

    def _write(self, params: List[Tensor], idx: List[int], new: Tensor) -> None:
        """Unit-scale positions ``new`` of a bucket back into its parameters."""
        new = new if self.scale == 1 else new * self.scale
        for j, i in enumerate(idx):
            params[i].copy_(self._unstack(new, j, params[i]))

    def _write_body(self, momenta: List[Tensor], idx: List[int], body: Tensor, params: List[Tensor]) -> None:
        """Body-frame momenta ``body`` of a bucket back into ``momenta`` (nothing to copy where the
        bucket is one tensor and ``body`` is a view of its momentum)."""
        for j, i in enumerate(idx):
            piece = self._unstack(body, j, params[i])
            if _needs_copy(piece, momenta[i]):
                momenta[i].copy_(piece)

    def _route(self, x: Tensor) -> str:
        return CAYLEY_ROUTE_BY_DEVICE.get(x.device.type, "solve") if self.cayley == "auto" else self.cayley

    def _cay(self, x: Tensor, a: Tensor, t: float, ctx: StepContext) -> Tensor:
        """``x cay(t a)`` on the bucket's route. Iterative: with host reads, the products the step's
        norm asks for (`cayley_products()`, from one read of ``max |t a|_F``), and the solve where
        the step is too large for them (under "auto": more than `AUTO_MAX_PRODUCTS`). Sync-free,
        "auto" takes the solve; "iterative" runs `cayley_sync_free_products()` products, and a
        matrix whose last update is still above the tolerance is not moved (``ctx.reject``)."""
        if self._route(x) != "iterative" or (ctx.sync_free and self.cayley == "auto"):
            # sync-free, "auto" keeps the solve: a fixed product count would have to reject the
            # large steps that the solve takes in its stride
            return cayley_drift(x, a, t)
        if not ctx.sync_free:
            bound = float(torch.linalg.matrix_norm(a).amax()) * abs(t)  # Frobenius: bounds the spectral norm
            cap = ITERATIVE_MAX_PRODUCTS if self.cayley == "iterative" else AUTO_MAX_PRODUCTS
            products = cayley_products(bound, x.dtype, cap)
            if products is None:
                return cayley_drift(x, a, t)
            return cayley_iterative(x, a, t, products)[0]
        y, change = cayley_iterative(x, a, t, cayley_sync_free_products(x.dtype))
        rejected = ~(change <= cayley_map_tolerance(x.dtype))  # NaN counts as not converged
        ctx.reject(rejected.sum())
        return torch.where(rejected[..., None, None], x, y)

    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        """Move by tangent vectors as stored: ``X cay(A / s)`` for a body-frame step ``A``, SHAKE
        from ``X + step / s`` otherwise."""
        s = self.scale
        for idx, rows in self._buckets(params):
            x = self._unit(self._stack(params, idx, rows))
            step = self._stack(steps, idx, rows)
            if self._cayley(params, idx, rows):
                self._write(params, idx, reorthonormalise(self._cay(x, step, 1 / s, ctx), ctx))
            else:
                self._write(params, idx, _shake(x, torch.add(x, step, alpha=1 / s), self.max_iter, ctx))

    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT, project_velocity=True):
        """Square matrices: ``X <- X cay(t A / s)``, and the body-frame velocity ``A`` is unchanged
        (the same tensors are returned). Otherwise SHAKE for the position, then RATTLE:
        ``v' = T_x'((x' - x) / t)`` (without the projection ``T_x'`` when ``project_velocity`` is
        False: see `drift_ou_drift_()`)."""
        s = self.scale
        out: List[Optional[Tensor]] = [None] * len(params)
        for idx, rows in self._buckets(params):
            x = self._unit(self._stack(params, idx, rows))
            if self._cayley(params, idx, rows):
                self._write(params, idx, reorthonormalise(self._cay(x, self._stack(velocities, idx, rows), t / s, ctx), ctx))
                for i in idx:
                    out[i] = velocities[i]
                continue
            y = torch.add(x, self._stack(velocities, idx, rows), alpha=t / s)
            new = _shake(x, y, self.max_iter, ctx)
            v = torch.sub(new, x).mul_(s / t)
            if project_velocity:
                v = self._tangent_unit(new, v)
            self._write(params, idx, new)
            for j, i in enumerate(idx):
                out[i] = self._unstack(v, j, params[i])
        return out

    def move_(self, params, grads, scale, weight_decay, noise, std, states, ctx=DEFAULT_CONTEXT):
        """The overdamped move without the two tangent projections of the composition. SHAKE
        corrects ``y = x + step`` along the normal space at ``x`` (``y + x L``, ``L`` symmetric), and a
        step's normal component ``x S`` only shifts ``L``: the corrected point is the same, so the
        raw step goes in. On the Cayley route the step is ``skew(X^T F) + std skew(xi)`` (one
        product). Weight decay's force ``x`` is normal and drops out either way (the set has fixed
        norms)."""
        s = self.scale
        forces: Optional[List[Tensor]] = None
        for idx, rows in self._buckets(params):
            x = self._unit(self._stack(params, idx, rows))
            if self._cayley(params, idx, rows):
                step = _twice_body_force(x, self._stack(grads, idx, rows)).mul_(0.5 * scale)  # scale skew(X^T g)
                if noise is not None:
                    step.add_(_skew(self._stack(noise, idx, rows)), alpha=std)
                self._write(params, idx, reorthonormalise(self._cay(x, step, 1 / s, ctx), ctx))
                continue
            if forces is None:
                forces = scaled_forces(grads, params, 0.0, scale)
            step = self._stack(forces, idx, rows)
            if noise is not None:
                step = torch.add(step, self._stack(noise, idx, rows), alpha=std)
            self._write(params, idx, _shake(x, torch.add(x, step, alpha=1 / s), self.max_iter, ctx))

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """``A(t) O A(t)`` with two tangent projections fewer than the composition: SHAKE corrects
        along the normal space at the drift's *starting* point, so a velocity's normal component
        there only shifts the correction and changes nothing. The first drift's velocity and the O
        step's noise therefore need no projection; the second drift's RATTLE projects the result."""
        if t <= 0:
            return super().drift_ou_drift_(params, momenta, t, c, noise, std, states, ctx)
        square, rest = self._split_routes(params)
        for idx, rows in square:
            self._cayley_drift_ou_drift_(params, momenta, t, c, noise, std, idx, rows, ctx)
        if not rest:
            return
        pick = lambda xs: [xs[i] for i in rest]  # noqa: E731
        params, momenta, states = pick(params), pick(momenta), pick(states)
        noise = None if noise is None else pick(noise)
        v = self.drift_many_(params, momenta, t, states, ctx, project_velocity=False)
        torch._foreach_mul_(v, c)
        if noise is not None:
            torch._foreach_add_(v, noise, alpha=std)
        torch._foreach_copy_(momenta, self.drift_many_(params, v, t, states, ctx))

    def _cayley_drift_ou_drift_(self, params, momenta, t, c, noise, std, idx, rows, ctx) -> None:
        """``A(t) O A(t)`` of one square bucket, in the body frame where the momenta are stored:
        ``x <- x cay(t b / s)``, ``b <- c b + std skew(xi)``, ``x <- x cay(t b / s)``: two solves
        and no product. Without noise the two drifts are one map (`_cayley_pair()`: one
        solve, two products)."""
        s = self.scale
        x = self._unit(self._stack(params, idx, rows))
        body = self._stack(momenta, idx, rows)  # a view of the momentum when the bucket is one tensor
        if noise is None and self._route(x) != "iterative":
            x = reorthonormalise(_cayley_pair(x, body, t / s, c), ctx)
            body.mul_(c)
        else:
            x = self._cay(x, body, t / s, ctx)
            body.mul_(c)
            if noise is not None:
                body.add_(_skew(self._stack(noise, idx, rows)), alpha=std)
            x = reorthonormalise(self._cay(x, body, t / s, ctx), ctx)
        self._write(params, idx, x)
        self._write_body(momenta, idx, body, params)
