"""Per-head logistic probes and head selection (docs/method.md §4); the folds are iti.folds.

Activations are head-wise `o_proj` inputs stored as [N, L, H*d]; head (l, h) is the slice [h*d, (h+1)*d) of layer l.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from iti.errors import UsageError

Head = tuple[int, int]

# Rows per pass of the NaN scan: bounds its temporary to a few hundred MB on real features.
_FINITE_CHECK_ROWS = 256
# Float64 working memory of one chunk of heads fitted together by the torch backend.
_CPU_CHUNK_BYTES = 256 << 20
_GPU_CHUNK_BYTES = 4 << 30


def layer_head_to_flattened_idx(layer: int, head: int, num_heads: int) -> int:
    return layer * num_heads + head


def flattened_idx_to_layer_head(flattened_idx: int, num_heads: int) -> Head:
    return flattened_idx // num_heads, flattened_idx % num_heads


def top_heads(val_accuracies: np.ndarray, k: int) -> list[Head]:
    """The k heads of highest accuracy, best first, ranked as the public workflow ranks them.

    Accuracies are multiples of 1/len(val), so ties are common and decide which heads are shifted. The public
    code reverses NumPy's default (unstable) argsort of the flattened accuracies; doing the same picks the same
    tied heads on the same NumPy build and CPU (its SIMD sorts order equal values differently).
    """
    accs = np.asarray(val_accuracies)
    if accs.ndim != 2:
        raise UsageError(f"val_accuracies must be [layers, heads], got shape {accs.shape}")
    _check_k(k, accs.size)
    return [flattened_idx_to_layer_head(int(i), accs.shape[1]) for i in np.argsort(accs.ravel())[::-1][:k]]


def random_heads(num_layers: int, num_heads: int, k: int, seed: int) -> list[Head]:
    """k distinct heads drawn uniformly (the `--use_random_dir` head choice)."""
    _check_k(k, num_layers * num_heads)
    picks = np.random.default_rng(seed).choice(num_layers * num_heads, size=k, replace=False)
    return [flattened_idx_to_layer_head(int(i), num_heads) for i in picks]


def _check_k(k: int, total: int) -> None:
    if not 0 <= k <= total:
        raise UsageError(f"cannot select {k} heads out of {total}; pick between 0 and {total}")


def head_dim_of(acts: np.ndarray, num_heads: int) -> int:
    """d for activations [N, L, H*d]; rejects arrays that are not head-wise features."""
    if acts.ndim != 3:
        raise UsageError(f"head-wise activations must be [rows, layers, heads*head_dim], got shape {acts.shape}; "
                         "load the *_head_wise.npy file")
    if num_heads <= 0 or acts.shape[2] % num_heads:
        raise UsageError(f"activation width {acts.shape[2]} is not a multiple of num_heads={num_heads}; "
                         "pass the model's number of attention heads")
    return acts.shape[2] // num_heads


def layer_heads(acts: np.ndarray, rows: np.ndarray | slice, layer: int, num_heads: int) -> np.ndarray:
    """Activations of layer `layer` for `rows`, as [n, H, d] (reads only that layer of a memmap)."""
    d = head_dim_of(acts, num_heads)
    block = np.asarray(acts[rows, layer, :])
    return block.reshape(block.shape[0], num_heads, d)


def check_finite_activations(acts: np.ndarray) -> None:
    """UsageError on NaN/inf, scanning in row blocks so a memmap never loads whole."""
    for start in range(0, acts.shape[0], _FINITE_CHECK_ROWS):
        block = acts[start:start + _FINITE_CHECK_ROWS]
        _require_finite(np.isfinite(block).all(), f" (rows {start}..{start + len(block) - 1})")


def _require_finite(finite, where: str = "") -> None:
    if not finite:
        raise UsageError(f"activations contain NaN or inf{where}; re-run get_activations "
                         "(float16 overflow is the usual cause: use bfloat16 or float32)")


@dataclass
class ProbeResult:
    """One logistic probe per head: validation accuracy [L, H], weights [L, H, d], bias [L, H]."""

    val_accuracies: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray


def train_probes(acts: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray, num_heads: int,
                 backend: str = "torch", device: str = "cpu", seed: int = 42, progress: bool = True) -> ProbeResult:
    """Fit an L2 (C=1) logistic regression per head on train rows; score accuracy on val rows.

    backend "sklearn" runs scikit-learn as the public workflow does (seed only feeds its
    random_state); "torch" solves all heads together with batched Newton to the same optimum.
    """
    if backend == "sklearn":
        return fit_sklearn_probes(acts, labels, train_rows, val_rows, num_heads, seed, progress)[1]
    if backend != "torch":
        raise UsageError(f"unknown probe backend {backend!r}; use 'torch' or 'sklearn'")
    d, labels, train_rows, val_rows = _check_probe_inputs(acts, labels, train_rows, val_rows, num_heads)
    torch_device = _torch_device(device)
    num_layers = acts.shape[1]
    total = num_layers * num_heads
    budget = _GPU_CHUNK_BYTES if torch_device.type == "cuda" else _CPU_CHUNK_BYTES
    # The float64 design matrix, its weighted copy and the active-set copy (float32 copies of the
    # first two on CPU): about three [n, d+1] float64 arrays.
    chunk = max(1, budget // (3 * 8 * len(train_rows) * (d + 1)))
    y_train = torch.as_tensor(labels[train_rows], dtype=torch.float64, device=torch_device)
    y_val = torch.as_tensor(labels[val_rows], dtype=torch.float64, device=torch_device)
    theta = torch.empty(total, d + 1, dtype=torch.float64)
    accs = torch.empty(total, dtype=torch.float64)
    for start in tqdm(range(0, total, chunk), desc="train_probes (torch)", disable=not progress):
        stop = min(start + chunk, total)
        x_train = _design(acts, train_rows, start, stop, num_heads, torch_device)
        x_val = _design(acts, val_rows, start, stop, num_heads, torch_device)
        # One float64 sum per block finds any NaN/inf: float32 inputs cannot overflow it.
        _require_finite(torch.isfinite(x_train.sum()) and torch.isfinite(x_val.sum()))
        fitted = newton_logistic(x_train, y_train)
        predictions = (x_val @ fitted.unsqueeze(-1)).squeeze(-1) > 0
        accs[start:stop] = (predictions == y_val.bool()).double().mean(-1).cpu()
        theta[start:stop] = fitted.cpu()
    theta_np = theta.numpy().reshape(num_layers, num_heads, d + 1)
    return ProbeResult(accs.numpy().reshape(num_layers, num_heads), theta_np[..., :d].copy(), theta_np[..., d].copy())


def _torch_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device {name!r}; use 'cpu' or 'cuda'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for but no CUDA GPU is visible; use device 'cpu'")
    return device


def _check_probe_inputs(acts: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                        num_heads: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(head_dim, labels, train rows, val rows), each checked."""
    d = head_dim_of(acts, num_heads)
    y = np.asarray(labels)
    if y.shape != (acts.shape[0],):
        raise UsageError(f"labels have shape {y.shape} but activations have {acts.shape[0]} rows; "
                         "load the *_labels.npy file made with these activations")
    if not np.isin(y, (0, 1)).all():
        raise UsageError("labels must be 0 (false) or 1 (true)")
    rows = []
    for name, r in (("train", train_rows), ("val", val_rows)):
        r = np.asarray(r, dtype=np.int64)
        if r.ndim != 1 or r.size == 0 or r.min() < 0 or r.max() >= acts.shape[0]:
            raise UsageError(f"{name} rows must be a non-empty list of row indices below {acts.shape[0]}")
        rows.append(r)
    if len(np.unique(y[rows[0]])) < 2:
        raise UsageError("the training rows hold only one label; probes need true and false answers")
    return d, y, rows[0], rows[1]


def fit_sklearn_probes(acts: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                       num_heads: int, seed: int, progress: bool = True
                       ) -> tuple[list[LogisticRegression], ProbeResult]:
    """scikit-learn probes one head at a time, as the public workflow fits them; models in flattened order."""
    d, labels, train_rows, val_rows = _check_probe_inputs(acts, labels, train_rows, val_rows, num_heads)
    num_layers = acts.shape[1]
    y_train, y_val = labels[train_rows], labels[val_rows]
    models: list[LogisticRegression] = []
    accs = np.empty((num_layers, num_heads))
    with tqdm(total=num_layers * num_heads, desc="train_probes (sklearn)", disable=not progress) as bar:
        for layer in range(num_layers):
            x_train = layer_heads(acts, train_rows, layer, num_heads)
            x_val = layer_heads(acts, val_rows, layer, num_heads)
            _require_finite(np.isfinite(x_train).all() and np.isfinite(x_val).all())
            for head in range(num_heads):
                clf = LogisticRegression(random_state=seed, max_iter=1000).fit(x_train[:, head], y_train)
                accs[layer, head] = np.mean(clf.predict(x_val[:, head]) == y_val)
                models.append(clf)
                bar.update()
    coefs = np.stack([clf.coef_[0] for clf in models]).reshape(num_layers, num_heads, d)
    return models, ProbeResult(accs, coefs, np.array([clf.intercept_[0] for clf in models]).reshape(accs.shape))


def _design(acts: np.ndarray, rows: np.ndarray, start: int, stop: int, num_heads: int,
            device: torch.device) -> torch.Tensor:
    """Heads with flattened indices [start, stop) on `rows` as float64 [stop-start, n, d+1] on `device`, a ones
    column last for the intercept; one layer read at a time."""
    d = acts.shape[2] // num_heads
    blocks = []
    for layer in range(start // num_heads, (stop - 1) // num_heads + 1):
        first, last = max(start - layer * num_heads, 0), min(stop - layer * num_heads, num_heads)
        blocks.append(np.asarray(acts[rows, layer, first * d:last * d]).reshape(len(rows), last - first, d))
    out = torch.ones(stop - start, len(rows), d + 1, dtype=torch.float64, device=device)
    out[..., :-1] = torch.as_tensor(np.concatenate(blocks, axis=1).transpose(1, 0, 2), device=device)
    return out


def newton_logistic(x: torch.Tensor, y: torch.Tensor, max_iter: int = 100, rel_tol: float = 1e-10) -> torch.Tensor:
    """Minimise, for each of B problems, sum_i log-loss(y_i, x_i . theta) + 0.5*|theta[:-1]|^2.

    x: [B, n, d+1] with a ones column last (the intercept, unpenalised as in scikit-learn); y: [n] in {0, 1},
    shared by all problems. Returns theta [B, d+1]. Damped Newton: the objective is strictly convex, so
    backtracking makes every step a descent and near the optimum the full step converges quadratically.

    On a CPU the Hessian, the one O(n d^2) product of an iteration, is formed in float32 (twice the float64
    rate); gradient, objective and line search stay float64, so the fixed point is the float64 optimum and
    Newton's contraction absorbs the step's ~1e-6 error. Not on GPUs, where float32 may run in TF32 (~1e-3).
    """
    num_problems, _, width = x.shape
    penalty = torch.ones(width, dtype=x.dtype, device=x.device)
    penalty[-1] = 0.0
    theta = torch.zeros(num_problems, width, dtype=x.dtype, device=x.device)
    hessian_dtype = torch.float32 if x.device.type == "cpu" else x.dtype
    x_h = x.to(hessian_dtype)
    margins = torch.zeros(num_problems, x.shape[1], dtype=x.dtype, device=x.device)
    values = _objective(margins, y, theta, penalty)
    active = torch.arange(num_problems, device=x.device)
    for _ in range(max_iter):
        everyone = len(active) == num_problems
        xa = x if everyone else x[active]
        xa_h = x_h if everyone else x_h[active]
        th, z, f0 = theta[active], margins[active], values[active]
        p = torch.sigmoid(z)
        grad = (xa.mT @ (p - y).unsqueeze(-1)).squeeze(-1) + penalty * th
        try:
            factor = _cholesky(_hessian(xa_h, p, penalty, x.dtype))
        except torch.linalg.LinAlgError:
            # The float32 product can lose positive definiteness on wide inputs of large values
            # (residual streams): this step takes the float64 Hessian instead.
            factor = _cholesky(_hessian(xa, p, penalty, x.dtype))
        step = -torch.cholesky_solve(grad.unsqueeze(-1), factor).squeeze(-1)
        slope = (grad * step).sum(-1)
        step_margins = (xa @ step.unsqueeze(-1)).squeeze(-1)
        size, f = _backtrack(z, step_margins, y, th, step, f0, slope, penalty)
        theta[active] = th + size.unsqueeze(-1) * step
        margins[active] = z + size.unsqueeze(-1) * step_margins
        values[active] = f
        # -slope is the squared Newton decrement, about twice the gap to the optimum before this
        # step; convergence is quadratic, so after the step the gap is near rel_tol squared.
        still_moving = -slope > rel_tol * f0.clamp(min=1.0)
        if not still_moving.any():
            return theta
        active = active[still_moving]
    raise RuntimeError(f"batched Newton did not converge in {max_iter} iterations for {len(active)} probes")


def _hessian(x: torch.Tensor, p: torch.Tensor, penalty: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x^T diag(p(1-p)) x + the penalty, formed in x's dtype and returned in `dtype`."""
    weights = (p * (1 - p)).to(x.dtype)
    hess = ((x * weights.unsqueeze(-1)).mT @ x).to(dtype)
    # A tiny ridge on the intercept keeps the system positive definite when every
    # prediction saturates (p(1-p) underflows); it is far below float64 noise otherwise.
    hess.diagonal(dim1=-2, dim2=-1).add_(penalty + 1e-10 * (1 - penalty))
    return hess


def _cholesky(hess: torch.Tensor) -> torch.Tensor:
    """Batched Cholesky factor, on CPU with one thread: MKL splits each small factorisation over OpenMP
    threads, whose barrier waits on busy cores cost up to seconds per batch instead of a millisecond."""
    if hess.device.type != "cpu":
        return torch.linalg.cholesky(hess)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.cholesky(hess)
    finally:
        torch.set_num_threads(threads)


def _objective(z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    return (torch.logaddexp(zero, z) - y * z).sum(-1) + 0.5 * (penalty * theta * theta).sum(-1)


def _backtrack(z: torch.Tensor, step_margins: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, step: torch.Tensor,
               f0: torch.Tensor, slope: torch.Tensor, penalty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Armijo step sizes per problem, halving from 1, and the objective there. Margins move
    linearly (z + size * x.step), so no candidate needs a product with x. The slack of 1e-12*f0
    absorbs rounding in f so that the tiny steps near the optimum are not refused for noise."""
    size = torch.ones_like(f0)
    for _ in range(40):
        candidate = theta + size.unsqueeze(-1) * step
        f = _objective(z + size.unsqueeze(-1) * step_margins, y, candidate, penalty)
        ok = f <= f0 + 1e-4 * size * slope + 1e-12 * f0.abs()
        if ok.all():
            break
        size = torch.where(ok, size, size / 2)
    return size, f
