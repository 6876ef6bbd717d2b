"""The Hessian-weighted noise scale B_noise = tr(H Sigma) / (G^T H G) at one parameter point (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training",
section 2.2: in a quadratic model of the loss, a step of size eps along the mean gradient
G_B of a batch of B examples is best at eps_opt(B) = eps_max / (1 + B_noise / B) and gains
dL_opt(B) = dL_max / (1 + B_noise / B), with

    B_noise = tr(H Sigma) / (G^T H G),    eps_max = |G|^2 / (G^T H G),

H the Hessian of the training loss. `batchlab.analysis.noise_scale` measures their
B_simple = tr(Sigma) / |G|^2, which is B_noise when H is proportional to the identity.

Definitions, identical to noise_scale's exact method so that B_simple and B_noise are
comparable: the n training examples are the population; example i's loss l_i is the sum
of its cross-entropy terms (one for a label; one per token of a language-model window, or
per labelled pixel of a segmentation map, IGNORE_INDEX positions contributing zero), the
loss of a batch of one in `ModelObjective._sum_loss`; g_i is its gradient, G = mean_i g_i
and Sigma = mean_i (g_i - G)(g_i - G)^T (normalised by n). H is the Hessian of
mean_i l_i, whose gradient is G. This is `ModelObjective`'s mean loss per target times
n_targets / n (1 for classification; the tokens per window for a language model), a
constant factor that cancels in B_noise and B_simple alike; the reported tr(H Sigma),
G^T H G, |G|^2 and tr(Sigma) are all in these per-example units, so `grad_sq` and
`trace_sigma` here equal noise_scale's exact ones. The batch size B of the formulas counts
examples (windows, images), as the training batch size does.

    G^T H G    = one Hessian-vector product (HVP),
    tr(H Sigma) = mean_i d_i^T H d_i,   d_i = g_i - G.

Two methods:

**exact** (`exact_b_noise`): every per-example gradient by `torch.func.vmap(grad(...))`
of the objective's own functional loss (as noise_scale), in chunks of `chunk_size`; H is
applied to each d_i, `hvp_batch` vectors per call. A first pass gives G = mean_i g_i in
float64 (and |G|^2, tr(Sigma) exactly as noise_scale computes them), the second the
quadratic forms d_i^T H d_i, accumulated in float64. Cost: n + 1 HVPs on the whole
training set, i.e. quadratic in n: on one CPU thread at n = 4000, about 1 minute for the
MNIST-1D MLP and 5 for its CNN (benchmarks/b_noise_cost.py). Exists where per-example gradients do: not for BatchNorm
with batch statistics, nor for the fused recurrent kernels of nn.RNN/GRU/LSTM
(`noise_scale.why_no_per_example_gradients`).

**probes** (`probe_b_noise`): no per-example gradients, only per-example *losses*. With
independent Rademacher signs r_i,

    v = (1/sqrt(n)) sum_i r_i d_i = (1/sqrt(n)) (grad(sum_i r_i l_i) - (sum_i r_i) G)

has E[v v^T] = Sigma, so E[v^T H v] = tr(H Sigma) and E|v|^2 = tr(Sigma) (Hutchinson's
estimator on the n x n matrix D H D^T / n). Each probe costs one backward pass of a
sign-weighted sum of the per-example losses (the forward pass is shared by a block of
probes) and one HVP. G and G^T H G are computed exactly, once. The probes' values
q = v^T H v are averaged and summarised by a 95% Student-t interval on tr(H Sigma); since
the denominator is exact, B_noise's interval is that interval divided by G^T H G. The
number of probes is adaptive: at least `n_probes`, then more in blocks until the standard
error of the mean is at most `rel_error` * |tr(H Sigma)|, or `max_probes` are spent
(`rel_error_met` says which). With a fixed number (`max_probes` = `n_probes`) the estimate
is exactly unbiased; stopping on the data's own standard error makes it very slightly
dependent on the stopping rule. The signs come from a torch.Generator seeded with `seed`.
The same probes give an unbiased tr(Sigma) (mean |v|^2) and hence a B_simple estimate.
Works for every model whose loss has a double backward (nn.LSTM/GRU included: every HVP
here is reverse-over-reverse, since the CPU LSTM kernel has no forward-mode AD), as long as
the examples do not interact: BatchNorm must use running statistics (bn_mode "eval").

**auto** (`model_b_noise`, method "auto"): exact where per-example gradients exist and
n <= exact_max_examples, else probes.

Conventions (those of `noise_scale.b_simple_of`): B_noise = tr(H Sigma) / (G^T H G) when
G^T H G > 0. G^T H G can be zero or negative at a non-convex point (negative curvature
along the mean gradient). The quadratic model then has no finite best step along G
(eps_max = +inf), so the gain of a noise-free step, and with it the benefit of larger
batches, never saturates in this local model: B_noise is +inf when tr(H Sigma) > 0, the
limit of the ratio as G^T H G falls to zero from above (the noise scale is beyond what
the local model resolves, as noise_scale's +inf for |G|^2 = 0). It is nan when
tr(H Sigma) <= 0 too (nothing is resolved). A negative tr(H Sigma) with G^T H G > 0
(negative curvature in the noise directions, or a noisy probe estimate) gives a negative
B_noise, left as measured. The raw tr(H Sigma) and G^T H G are always kept in the result.
The probes' interval follows the same map: (lo, hi) / G^T H G when G^T H G > 0; otherwise
(+inf, +inf) when the whole interval of tr(H Sigma) is positive, else (nan, nan).

Configuration (`cfg`, keys of DEFAULTS; a missing key takes its default, an unknown key is
a ValueError):
- method: "auto" | "exact" | "probes";
- exact_max_examples: largest n for which "auto" chooses exact;
- chunk_size: examples per vmap call of per-example gradients (exact);
- hvp_batch: vectors per HVP call (torch.autograd.grad with is_grads_batched); on the CPU
  one at a time is fastest (batching measured 1.5-4x slower per vector), a GPU may prefer more;
- data_chunk_size: examples per forward pass of the training set (bounds the memory when
  retain_graph is false; the value does not depend on it);
- retain_graph: keep the double-backward graph of the whole training set in memory, so each
  HVP is one backward pass (as `ModelObjective.hvp_at`); False recomputes it chunk by chunk
  for every call (memory of one chunk; 1.0-1.4x the time on MNIST-1D);
- n_probes, max_probes, rel_error: the probes' minimum, maximum and stopping target. On
  MNIST-1D (n = 4000) one probe's v^T H v has a coefficient of variation of 0.4-0.85, so a
  10% standard error takes about 16-70 probes; the minimum is 20 because a standard error
  estimated from 10 probes let runs stop early with 15-19% errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.func import functional_call, grad, vmap

from batchlab.analysis.noise_scale import b_simple_of, why_no_per_example_gradients
from batchlab.analysis.objective import ModelObjective
from batchlab.metrics import cross_entropy

METHODS = ("auto", "exact", "probes")
CI_LEVEL = 0.95
DEFAULTS = {
    "method": "auto",
    "exact_max_examples": 512,
    "chunk_size": 256,
    "hvp_batch": 1,
    "data_chunk_size": 4096,
    "retain_graph": True,
    "n_probes": 20,
    "max_probes": 100,
    "rel_error": 0.1,
}


@dataclass
class BNoise:
    """One B_noise measurement, its parts, its interval and its cost (units: see the module docstring)."""

    b_noise: float  # tr(H Sigma) / (G^T H G) (see the module docstring for inf and nan)
    trace_h_sigma: float  # tr(H Sigma): exact, or the probes' mean
    g_h_g: float  # G^T H G, always exact
    grad_sq: float  # |G|^2, always exact
    trace_sigma: float  # tr(Sigma): exact, or the probes' unbiased mean |v|^2
    b_simple: float  # tr(Sigma) / |G|^2 from the two above (an estimate for probes)
    method: str  # "exact" or "probes"
    n_examples: int  # training-set size n (the population)
    n_hvp: int  # Hessian-vector products spent: n + 1 (exact) or probes + 1
    n_probes: int  # probes taken (0 for exact)
    ci_low: float  # 95% interval of b_noise: width zero for exact, from the t-interval of tr(H Sigma) for probes
    ci_high: float
    stderr: float  # standard error of trace_h_sigma (0 for exact)
    rel_error_met: bool  # exact: True; probes: stderr <= rel_error * |trace_h_sigma| at the end
    seconds: float  # wall-clock seconds of the measurement (model_b_noise: setup included)


# ---------------------------------------------------------------- configuration


def b_noise_config(cfg: dict | None) -> dict:
    """`cfg` merged over DEFAULTS and checked; a ValueError names the first bad key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown B_noise config key(s) {unknown}; known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    if out["method"] not in METHODS:
        raise ValueError(f"unknown B_noise method {out['method']!r}; choose one of {', '.join(METHODS)}")
    for key in ("exact_max_examples",):
        if not _is_int(out[key]) or out[key] < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {out[key]!r}")
    for key in ("chunk_size", "hvp_batch", "data_chunk_size", "n_probes", "max_probes"):
        if not _is_int(out[key]) or out[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {out[key]!r}")
    if out["n_probes"] < 2:
        raise ValueError(f"n_probes must be at least 2 (a standard error needs two probes), got {out['n_probes']}")
    if out["max_probes"] < out["n_probes"]:
        raise ValueError(f"max_probes must be at least n_probes, got max_probes={out['max_probes']} "
                         f"and n_probes={out['n_probes']}")
    rel = out["rel_error"]
    if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not rel > 0 or not math.isfinite(rel):
        raise ValueError(f"rel_error must be a positive number, got {rel!r}")
    if not isinstance(out["retain_graph"], bool):
        raise ValueError(f"retain_graph must be true or false, got {out['retain_graph']!r}")
    return out


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ---------------------------------------------------------------- the loss at one point


class Point(Protocol):
    """What the estimators need of a loss sum_i l_i / n at one point w (flat tensors of P entries)."""

    n: int

    def mean_grad(self) -> torch.Tensor: ...  # G = mean_i g_i, (P,)

    def hvp(self, V: torch.Tensor) -> torch.Tensor: ...  # H V^T for V (k, P): (k, P)

    def signed_grads(self, R: torch.Tensor) -> torch.Tensor: ...  # rows: grad of sum_i R[k, i] l_i, R (k, n)

    def example_grads(self, start: int, stop: int) -> torch.Tensor: ...  # g_i for i in [start, stop): (m, P)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class ModelPoint:
    """A model's per-example cross-entropy losses on (x, y) at its current weights, as a `Point`.

    Built on a `ModelObjective` (its flattening, buffers, BN mode and cuDNN rule); the
    per-example loss is the objective's `_sum_loss` on a batch of one, computed for a whole
    chunk at once with reduction "none". H is the Hessian of mean_i l_i, applied by
    reverse-over-reverse differentiation. With `retain_graph` the forward graph and the
    gradient's graph of the whole training set are built once and kept.
    """

    def __init__(self, obj: ModelObjective, data_chunk_size: int = 4096, retain_graph: bool = True):
        if obj.bn_mode == "batch" and _has_batchnorm(obj.model):
            raise ValueError("B_noise needs per-example losses, but BatchNorm with batch statistics couples the "
                             "examples of a batch (use bn_mode='eval')")
        self.obj, self.n, self.chunk = obj, obj.n, data_chunk_size
        self.w = obj.params().requires_grad_(True)
        self._kept = None
        self._G = None
        if retain_graph:
            total = torch.cat([l for _, _, l in self._forward()])
            g = torch.autograd.grad(total.sum() / self.n, self.w, create_graph=True)[0]
            self._kept = (total, g)
            self._G = g.detach()

    def _losses(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Per-example losses (m,): each example's summed cross-entropy, IGNORE_INDEX targets contributing 0."""
        obj = self.obj
        with torch.backends.cudnn.flags(enabled=obj._cudnn and torch.backends.cudnn.enabled):
            logits = functional_call(obj.model, (obj.unflatten(w), obj._buffers), (xb,))
        per_target = cross_entropy(logits, yb, reduction="none")
        return per_target.reshape(len(yb), -1).sum(1)

    def _forward(self):
        """(start, stop, per-example losses with their graph) chunk by chunk."""
        x, y = self.obj.x, self.obj.y
        for start in range(0, self.n, self.chunk):
            stop = min(start + self.chunk, self.n)
            yield start, stop, self._losses(self.w, x[start:stop], y[start:stop])

    def mean_grad(self) -> torch.Tensor:
        if self._G is None:
            g = torch.zeros_like(self.w)
            for _, _, l in self._forward():
                g += torch.autograd.grad(l.sum(), self.w)[0]
            self._G = g / self.n
        return self._G

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        batched = V.shape[0] > 1
        if self._kept is not None:
            g = self._kept[1]
            out = torch.autograd.grad(g, self.w, V if batched else V[0], retain_graph=True, is_grads_batched=batched)[0]
            return out.detach().reshape(V.shape)
        out = torch.zeros_like(V)
        for _, _, l in self._forward():
            g = torch.autograd.grad(l.sum(), self.w, create_graph=True)[0]
            out += torch.autograd.grad(g, self.w, V if batched else V[0], is_grads_batched=batched)[0].reshape(V.shape)
        return out / self.n

    def signed_grads(self, R: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(R.shape[0], self.w.numel(), dtype=self.w.dtype, device=self.w.device)
        parts = [(0, self.n, self._kept[0])] if self._kept is not None else self._forward()
        for start, stop, l in parts:
            for k in range(R.shape[0]):
                out[k] += torch.autograd.grad(l, self.w, R[k, start:stop], retain_graph=True)[0]
        return out

    def example_grads(self, start: int, stop: int) -> torch.Tensor:
        obj = self.obj

        def example_loss(w: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            # the objective's own functional loss on a batch of one, as noise_scale's exact method
            return obj._sum_loss(w, xi[None], yi[None])

        w = self.w.detach()
        return vmap(grad(example_loss), in_dims=(None, 0, 0))(w, obj.x[start:stop], obj.y[start:stop])


# ---------------------------------------------------------------- estimators


def _quadratic_forms(point: Point, V: torch.Tensor, hvp_batch: int) -> torch.Tensor:
    """v^T H v for each row v of V, in float64, `hvp_batch` rows per HVP call."""
    out = []
    for i in range(0, V.shape[0], hvp_batch):
        block = V[i : i + hvp_batch]
        out.append((block.double() * point.hvp(block).double()).sum(1))
    return torch.cat(out)


def _ratio_interval(low: float, high: float, g_h_g: float) -> tuple[float, float]:
    """B_noise's interval from tr(H Sigma)'s, with the module's conventions for G^T H G <= 0."""
    if g_h_g > 0:
        return low / g_h_g, high / g_h_g
    return (math.inf, math.inf) if low > 0 else (math.nan, math.nan)


def exact_b_noise(point: Point, chunk_size: int = 256, hvp_batch: int = 1) -> BNoise:
    """B_noise from every per-example gradient: tr(H Sigma) = mean_i d_i^T H d_i, exactly (n + 1 HVPs)."""
    if chunk_size < 1 or hvp_batch < 1:
        raise ValueError(f"chunk_size and hvp_batch must be at least 1, got {chunk_size} and {hvp_batch}")
    t0 = time.perf_counter()
    n = point.n
    grad_sum, sq_sum, dtype = None, 0.0, None
    for start in range(0, n, chunk_size):  # first pass: G, |G|^2 and tr(Sigma), as noise_scale
        g = point.example_grads(start, min(start + chunk_size, n))
        dtype, g = g.dtype, g.double()
        grad_sum = g.sum(0) if grad_sum is None else grad_sum + g.sum(0)
        sq_sum += g.pow(2).sum().item()
    G64 = grad_sum / n
    grad_sq = G64.pow(2).sum().item()
    trace_sigma = sq_sum / n - grad_sq
    G = G64.to(dtype)
    g_h_g = _quadratic_forms(point, G[None], 1).item()
    total = 0.0
    for start in range(0, n, chunk_size):  # second pass: d_i^T H d_i
        d = point.example_grads(start, min(start + chunk_size, n)) - G
        total += _quadratic_forms(point, d, hvp_batch).sum().item()
    trace_h_sigma = total / n
    b_noise = b_simple_of(trace_h_sigma, g_h_g)
    return BNoise(b_noise, trace_h_sigma, g_h_g, grad_sq, trace_sigma, b_simple_of(trace_sigma, grad_sq), "exact",
                  n, n + 1, 0, b_noise, b_noise, 0.0, True, time.perf_counter() - t0)


def probe_vectors(point: Point, R: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """v_k = (1/sqrt(n)) (grad(sum_i R[k, i] l_i) - (sum_i R[k, i]) G) for each row of R (k, n)."""
    R = R.to(G.device, G.dtype)
    return (point.signed_grads(R) - R.sum(1, keepdim=True) * G) / math.sqrt(point.n)


def _probes_to_add(done: int, se: float, target: float, n_probes: int, max_probes: int) -> int:
    """Size of the next block: where SE ~ 1/sqrt(probes) would meet the target, at least
    `n_probes` (the SE is itself noisy) and at most doubling, within `max_probes`."""
    if target > 0 and math.isfinite(se):
        wanted = min(done, max(n_probes, math.ceil(done * (se / target) ** 2) - done))
    else:
        wanted = done
    return min(max_probes - done, wanted)


def probe_b_noise(point: Point, n_probes: int = 10, seed: int = 0, *, max_probes: int | None = None,
                  rel_error: float = 0.1, hvp_batch: int = 1) -> BNoise:
    """B_noise with tr(H Sigma) estimated by Rademacher probes of the per-example gradients (see the module docstring).

    At least `n_probes`, then more until the standard error of tr(H Sigma) is at most
    `rel_error` * |tr(H Sigma)| or `max_probes` (default: `n_probes`, a fixed number) are spent.
    """
    max_probes = n_probes if max_probes is None else max_probes
    if n_probes < 2 or max_probes < n_probes:
        raise ValueError(f"need 2 <= n_probes <= max_probes, got n_probes={n_probes} and max_probes={max_probes}")
    if not rel_error > 0:
        raise ValueError(f"rel_error must be positive, got {rel_error}")
    if hvp_batch < 1:
        raise ValueError(f"hvp_batch must be at least 1, got {hvp_batch}")
    t0 = time.perf_counter()
    n = point.n
    G = point.mean_grad()
    grad_sq = G.double().pow(2).sum().item()
    g_h_g = _quadratic_forms(point, G[None], 1).item()
    gen = torch.Generator().manual_seed(seed)
    q, sq = [], []
    block = n_probes
    while True:
        R = torch.randint(0, 2, (block, n), generator=gen).mul_(2).sub_(1)
        V = probe_vectors(point, R, G)
        q += _quadratic_forms(point, V, hvp_batch).tolist()
        sq += V.double().pow(2).sum(1).tolist()
        mean, se = float(np.mean(q)), float(np.std(q, ddof=1) / math.sqrt(len(q)))
        met = se <= rel_error * abs(mean)
        if met or len(q) >= max_probes:
            break
        block = _probes_to_add(len(q), se, rel_error * abs(mean), n_probes, max_probes)
    half = stats.t.ppf(0.5 + CI_LEVEL / 2, len(q) - 1) * se
    ci_low, ci_high = _ratio_interval(mean - half, mean + half, g_h_g)
    trace_sigma = float(np.mean(sq))
    return BNoise(b_simple_of(mean, g_h_g), mean, g_h_g, grad_sq, trace_sigma, b_simple_of(trace_sigma, grad_sq),
                  "probes", n, len(q) + 1, len(q), ci_low, ci_high, se, bool(met), time.perf_counter() - t0)


# ---------------------------------------------------------------- dispatch


def b_noise_method(model: nn.Module, n: int, cfg: dict | None, bn_mode: str = "eval") -> str:
    """"exact" or "probes": the method `model_b_noise` uses. An explicit "exact" without
    per-example gradients, or any method with BatchNorm in batch mode, is a ValueError."""
    cfg = b_noise_config(cfg)
    if bn_mode == "batch" and _has_batchnorm(model):
        raise ValueError("B_noise needs per-example losses, but BatchNorm with batch statistics couples the "
                         "examples of a batch (use bn_mode='eval')")
    reason = why_no_per_example_gradients(model, bn_mode)
    if cfg["method"] == "exact" and reason:
        raise ValueError(f"B_noise method 'exact' needs per-example gradients, but {reason}; use method 'probes'")
    if cfg["method"] == "auto":
        return "exact" if reason is None and n <= cfg["exact_max_examples"] else "probes"
    return cfg["method"]


def model_b_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict | None = None, seed: int = 0,
                  bn_mode: str = "eval") -> BNoise:
    """B_noise of a model's per-example cross-entropy on (x, y) at its current weights, by `cfg`'s method.

    `cfg`: keys of DEFAULTS (see the module docstring); `seed` seeds the probes' signs;
    `bn_mode` as in `ModelObjective` (BatchNorm needs "eval"). The model's weights and
    buffers are not changed, and its train/eval mode is restored.
    """
    cfg = b_noise_config(cfg)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs, and at least one: got {len(x)} and {len(y)}")
    method = b_noise_method(model, len(x), cfg, bn_mode)
    was_training = model.training
    t0 = time.perf_counter()
    try:
        obj = ModelObjective(model, x, y, bn_mode=bn_mode, chunk_size=cfg["data_chunk_size"])
        point = ModelPoint(obj, cfg["data_chunk_size"], cfg["retain_graph"])
        if method == "exact":
            result = exact_b_noise(point, cfg["chunk_size"], cfg["hvp_batch"])
        else:
            result = probe_b_noise(point, cfg["n_probes"], seed, max_probes=cfg["max_probes"],
                                   rel_error=cfg["rel_error"], hvp_batch=cfg["hvp_batch"])
    finally:
        model.train(was_training)
    return replace(result, seconds=time.perf_counter() - t0)  # the setup (the graph) included
