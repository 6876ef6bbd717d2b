"""Benchmark: our Lanczos top eigenvalue and Hutchinson trace against PyHessian (Yao et al. 2020).

Same checkpoint, same data, same device, same loss: PyHessian puts the model in eval mode and
takes the mean cross-entropy over one batch, so ours uses a ModelObjective with
bn_mode="eval" on exactly that batch (the first --n-examples training examples, no
augmentation). Each method is timed with time.perf_counter after a warm-up; the timings
include each side's setup (PyHessian's forward/backward with create_graph, our
ModelObjective), since each is needed once per analysed point.

Run (PyHessian is only needed here, not by the project):
    .venv/bin/python -m pip install pyhessian==0.1
    .venv/bin/python benchmarks/hessian_vs_pyhessian.py [--checkpoint RUN/final.pt --data results/data/mnist1d.npz]

Without --checkpoint it generates MNIST-1D and trains a small CNN first (the whole run takes
about 20 s on 2 quiet CPU cores).
Exit status 2 when PyHessian is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from batchlab import io  # noqa: E402
from batchlab.analysis.hessian import hutchinson_trace, rademacher, top_eigenvalue  # noqa: E402
from batchlab.analysis.objective import ModelObjective  # noqa: E402
from batchlab.data import Dataset, load_prepared  # noqa: E402
from batchlab.models import build_model  # noqa: E402


def import_pyhessian():
    try:
        # the module, not the class `pyhessian.hessian` that the package's __init__ re-exports
        ph = importlib.import_module("pyhessian.hessian")
    except ImportError:
        print(
            "PyHessian is not installed. Install it into the venv for this benchmark only:\n"
            "    .venv/bin/python -m pip install pyhessian==0.1",
            file=sys.stderr,
        )
        sys.exit(2)
    return ph


# --- the model and data under test ----------------------------------------------------------

def load_checkpoint(path: Path, data_path: Path | None, device: torch.device) -> tuple[nn.Module, Dataset, str]:
    """A workflow checkpoint's model (final.pt or checkpoints/step_<k>.pt) and its prepared data set."""
    state = io.load_torch(path, map_location=device)
    spec = state["spec"]
    if data_path is None:
        data_path = Path("results/data") / f"{spec['dataset']}.npz"
        if not data_path.exists():
            raise SystemExit(f"--data not given and {data_path} does not exist")
    data = load_prepared(data_path, device)
    model = build_model(spec["model"], data.input_shape, data.num_classes, spec.get("bn_batch_size")).to(device)
    model.load_state_dict(state["model"])
    return model, data, f"{path} ({spec['model']}, batch size {spec['batch_size']}, step {state.get('step', '?')})"


def train_quick_cnn(device: torch.device, steps: int = 600) -> tuple[nn.Module, Dataset, str]:
    """A CNN trained for `steps` SGD steps (batch 64) on freshly generated MNIST-1D."""
    from batchlab.data.mnist1d import prepare_mnist1d

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mnist1d.npz"
        prepare_mnist1d(path)
        data = load_prepared(path, device)
    torch.manual_seed(0)
    model = build_model("cnn", data.input_shape, data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(data.n_train, (64,), generator=g).to(device)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    return model, data, f"CNN trained {steps} SGD steps on MNIST-1D here (test accuracy {acc:.3f})"


# --- the two implementations ----------------------------------------------------------------

class CountingHVP:
    """Wraps PyHessian's module-level hessian_vector_product to count its calls."""

    def __init__(self, ph):
        self.ph, self.inner, self.count = ph, ph.hessian_vector_product, 0

    def __enter__(self):
        def counted(*args, **kwargs):
            self.count += 1
            return self.inner(*args, **kwargs)

        self.ph.hessian_vector_product = counted
        return self

    def __exit__(self, *exc):
        self.ph.hessian_vector_product = self.inner


def theirs_eigenvalue(ph, model, x, y, device, max_iter: int, tol: float, seed: int) -> tuple[float, int]:
    """PyHessian's top eigenvalue: power iteration (largest |eigenvalue|) from a torch.randn start."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)  # PyHessian's backward would add to any stale .grad
    with CountingHVP(ph) as counter:
        h = ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol)
    model.zero_grad(set_to_none=True)  # drop the create_graph gradients PyHessian leaves behind
    return float(values[0]), counter.count


def theirs_trace(ph, model, x, y, device, probes: int, seed: int) -> tuple[float, float, int]:
    """PyHessian's Hutchinson trace with exactly `probes` probes, and the standard error of their mean."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    with CountingHVP(ph) as counter:
        h = ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        # tol=-inf switches off PyHessian's early stop, so both sides use the same number of probes
        terms = np.array(h.trace(maxIter=probes, tol=-math.inf))
    model.zero_grad(set_to_none=True)
    return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(len(terms))), counter.count


def ours_eigenvalue(model, x, y, max_hvp: int, tol: float, seed: int) -> tuple[float, int]:
    return top_eigenvalue(ModelObjective(model, x, y, bn_mode="eval"), tol=tol, max_hvp=max_hvp, seed=seed)


def ours_trace(model, x, y, probes: int, seed: int) -> tuple[float, float, int]:
    est, se = hutchinson_trace(ModelObjective(model, x, y, bn_mode="eval"), n_probes=probes, seed=seed)
    return est, se, probes


def same_first_probe(model: nn.Module, seed: int, their_seed: int) -> bool:
    """Whether PyHessian's first Rademacher probe (global RNG, per tensor) equals ours (CPU generator, flat)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ours = rademacher(sum(p.numel() for p in params), torch.Generator().manual_seed(seed))
    torch.manual_seed(their_seed)
    theirs = [torch.randint_like(p, high=2) for p in params]  # as in pyhessian.hessian.trace
    for t in theirs:
        t[t == 0] = -1
    return torch.equal(ours, torch.cat([t.reshape(-1) for t in theirs]).cpu().to(ours.dtype))


def best_time(fn, device: torch.device, repeats: int):
    """fn()'s result and its fastest wall time in seconds over `repeats` calls (a GPU synchronised)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, min(times)


# --- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="a run's final.pt or checkpoints/step_<k>.pt")
    ap.add_argument("--data", type=Path, help="the prepared .npz the run trained on")
    ap.add_argument("--n-examples", type=int, default=1000, help="first N training examples (default 1000)")
    ap.add_argument("--probes", type=int, default=100, help="Hutchinson probes, both sides (default 100)")
    ap.add_argument("--tol", type=float, default=1e-3, help="eigenvalue tolerance, both sides (default 1e-3)")
    ap.add_argument("--max-iter", type=int, default=100, help="PyHessian power iterations at most (default 100)")
    ap.add_argument("--max-hvp", type=int, default=300, help="our Lanczos HVP budget (default 300)")
    ap.add_argument("--seed", type=int, default=0, help="seed of our probes / start vector (default 0)")
    ap.add_argument("--pyhessian-seed", type=int, help="torch.manual_seed for PyHessian (default: --seed)")
    ap.add_argument("--repeats", type=int, default=3, help="time each method this often, report the fastest")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    their_seed = args.seed if args.pyhessian_seed is None else args.pyhessian_seed

    ph = import_pyhessian()
    # PyHessian calls backward(create_graph=True); we reset .grad to None after each use, as
    # this warning asks. The other comes from inside torch. Neither concerns the results.
    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if args.data is not None and args.checkpoint is None:
        raise SystemExit("--data only makes sense with --checkpoint")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.checkpoint is not None:
        model, data, what = load_checkpoint(args.checkpoint, args.data, device)
    else:
        model, data, what = train_quick_cnn(device)
    model.eval()
    x, y = data.x_train[: args.n_examples], data.y_train[: args.n_examples]
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {what}")
    print(f"{n_params} parameters, {len(x)} examples, device {device}, {torch.get_num_threads()} torch threads")
    print("loss: mean cross-entropy over one batch, eval mode (BN running stats), no augmentation")
    print(f"eigenvalue: tol {args.tol:g}; ours Lanczos (<= {args.max_hvp} HVPs), PyHessian power iteration "
          f"(<= {args.max_iter}); trace: {args.probes} Rademacher probes each")
    print(f"times: fastest of {args.repeats}, after a warm-up, each including its own setup\n")

    # warm-up: first calls pay for kernel selection and torch.func tracing
    logging.getLogger("batchlab.analysis.hessian").setLevel(logging.ERROR)  # 3 HVPs cannot converge
    ours_eigenvalue(model, x, y, max_hvp=3, tol=args.tol, seed=args.seed)
    logging.getLogger("batchlab.analysis.hessian").setLevel(logging.NOTSET)
    ours_trace(model, x, y, probes=2, seed=args.seed)
    theirs_eigenvalue(ph, model, x, y, device, max_iter=2, tol=args.tol, seed=their_seed)
    theirs_trace(ph, model, x, y, device, probes=2, seed=their_seed)

    r = args.repeats
    (o_eig, o_eig_n), o_eig_t = best_time(lambda: ours_eigenvalue(model, x, y, args.max_hvp, args.tol, args.seed), device, r)
    (t_eig, t_eig_n), t_eig_t = best_time(
        lambda: theirs_eigenvalue(ph, model, x, y, device, args.max_iter, args.tol, their_seed), device, r)
    (o_tr, o_se, o_tr_n), o_tr_t = best_time(lambda: ours_trace(model, x, y, args.probes, args.seed), device, r)
    (t_tr, t_se, t_tr_n), t_tr_t = best_time(
        lambda: theirs_trace(ph, model, x, y, device, args.probes, their_seed), device, r)

    def rel(a: float, b: float) -> str:
        return f"{abs(a - b) / abs(b):.1e}"

    print("| quantity | ours | PyHessian | rel. diff | ours HVPs | their HVPs | ours s | their s | theirs/ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| top eigenvalue | {o_eig:.6g} | {t_eig:.6g} | {rel(o_eig, t_eig)} | {o_eig_n} | {t_eig_n} "
        f"| {o_eig_t:.2f} | {t_eig_t:.2f} | {t_eig_t / o_eig_t:.2f} |"
    )
    print(
        f"| trace (± s.e.) | {o_tr:.6g} ± {o_se:.3g} | {t_tr:.6g} ± {t_se:.3g} | {rel(o_tr, t_tr)} | {o_tr_n} "
        f"| {t_tr_n} | {o_tr_t:.2f} | {t_tr_t:.2f} | {t_tr_t / o_tr_t:.2f} |"
    )

    # accuracy, untimed: a tight Lanczos run as the reference for both eigenvalues
    ref, ref_n = ours_eigenvalue(model, x, y, max_hvp=1000, tol=1e-8, seed=args.seed + 1)
    print(f"\nreference top eigenvalue (Lanczos, tol 1e-8, {ref_n} HVPs): {ref:.8g}; "
          f"error ours {rel(o_eig, ref)}, PyHessian {rel(t_eig, ref)}")
    if device.type == "cpu" and same_first_probe(model, args.seed, their_seed):
        print("trace: both sides drew the SAME Rademacher probes (same seed, same CPU random stream), so the "
              "difference is round-off only; pass --pyhessian-seed to compare independent estimates")
    else:
        gap = abs(o_tr - t_tr) / math.hypot(o_se, t_se)
        print(f"trace: independent probes; the estimates differ by {gap:.2f} combined standard errors")
    print("time per HVP (ms): ours {:.1f} (eigenvalue) {:.1f} (trace); PyHessian {:.1f} (eigenvalue) {:.1f} (trace)".format(
        1e3 * o_eig_t / o_eig_n, 1e3 * o_tr_t / o_tr_n, 1e3 * t_eig_t / t_eig_n, 1e3 * t_tr_t / t_tr_n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
