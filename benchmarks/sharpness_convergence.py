"""Benchmark: Keskar's epsilon-sharpness as the paper searched it, against the search run to the end.

For the small-batch (SB) and large-batch (LB) runs of a study (by default config.yaml's
`keskar`: MNIST-1D MLP, Adam, batch 32 against 400, trained to train loss 0.01), on the
study's analysis subset (`analysis.n_examples` training examples, drawn as
`batchlab.analysis.measure` draws them) and at each epsilon, it measures phi three ways:
- paper:     `eps_sharpness`, one L-BFGS-B run of 10 iterations from the heuristic start
             (Keskar et al.'s "about 10 iterations"; what `analyse_run` records);
- converged: `eps_sharpness_converged` with its defaults;
- long:      `eps_sharpness_converged` with n_starts=--long-starts (48), screen_iter=max_iter=
             --long-max-iter (1000), rtol=0: every start (the first 24 are the converged
             measure's) climbed to 1000 iterations or until a run of 10 iterations gains
             nothing; the reference the other two are divided by.
It prints phi, evaluations (function+gradient, n_fev) and seconds of each, the ratios to the
long search, and the LB/SB ratio of phi by each method. With --measure-seeds K (full space
only, where the seed moves only the random starts) the converged measure is rerun with seeds
0..K-1 and its worst and best ratio to the long search printed: how much its random starts matter.

    .venv/bin/python benchmarks/sharpness_convergence.py [--seeds 0] [--epsilons 1e-3 5e-4] \
        [--subspace-dim 100] [--long-starts 48] [--measure-seeds 0] [--train]

It reads each run's final.pt under results/runs/<run id>/ and the prepared data set under
results/data/ (prepared here when missing). A run without final.pt is reported with the
snakemake command that trains it (exit status 2); --train trains it here instead, with the
library's `batchlab.train.loop.train_run`, into the same run directory as the workflow would.
Seed 0 with --measure-seeds 4 took 11 minutes on the shared 2-core machine (the long search
~85-140 s per row, the converged measure ~15 s, the paper's 0.1 s).
On a busy 2-core machine, keep BLAS to one thread (set below unless already set): L-BFGS-B's
own vector operations on 15k variables ran about 8x slower multi-threaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/scipy load their BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from batchlab import io  # noqa: E402
from batchlab.analysis.measure import analysis_subset  # noqa: E402
from batchlab.analysis.objective import ModelObjective  # noqa: E402
from batchlab.analysis.sharpness import (  # noqa: E402
    CONVERGED_N_STARTS,
    SharpnessResult,
    eps_sharpness,
    eps_sharpness_converged,
)
from batchlab.config import RunSpec, build_grid, build_stacks, load_configs  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.data.prepare import prepare_dataset  # noqa: E402
from batchlab.models import build_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "config.yaml"))
    p.add_argument("--study", default="keskar")
    p.add_argument("--results", default=str(REPO / "results"), help="the workflow's results folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds: one SB/LB pair each")
    p.add_argument("--epsilons", type=float, nargs="+", default=[1e-3, 5e-4])
    p.add_argument("--subspace-dim", type=int, default=None, help="p of the random subspace; default: full space")
    p.add_argument("--long-starts", type=int, default=48)
    p.add_argument("--long-max-iter", type=int, default=1000)
    p.add_argument("--measure-seeds", type=int, default=0, help="rerun the converged measure with seeds 0..K-1")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--train", action="store_true", help="train missing runs here (batchlab.train.loop.train_run)")
    return p.parse_args(argv)


def timed(fn, *args, **kwargs) -> tuple[SharpnessResult, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def study_pairs(config: dict, study: str, seeds: list[int]) -> list[tuple[int, RunSpec, RunSpec]]:
    """(seed, SB spec, LB spec): the smallest and the largest batch size of the study at each seed."""
    runs = [r for r in build_grid(config).values() if r.study == study]
    if not runs:
        sys.exit(f"no runs of study {study!r} in the config")
    pairs = []
    for seed in seeds:
        at_seed = sorted((r for r in runs if r.seed == seed), key=lambda r: r.batch_size)
        if len(at_seed) < 2:
            sys.exit(f"study {study!r} has no two batch sizes at seed {seed}")
        pairs.append((seed, at_seed[0], at_seed[-1]))
    return pairs


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    config = load_configs([args.config])
    study = config["studies"][args.study]
    cfg = study["analysis"]
    pairs = study_pairs(config, args.study, args.seeds)

    data_path = results / "data" / f"{study['dataset']}.npz"
    if not data_path.exists():
        print(f"preparing {data_path}")
        data_path.parent.mkdir(parents=True, exist_ok=True)
        prepare_dataset(study["dataset"], data_path, config["datasets"].get(study["dataset"], {}))

    specs = [s for _, sb, lb in pairs for s in (sb, lb)]
    missing = [s for s in specs if not (results / "runs" / s.run_id / "final.pt").exists()]
    if missing and not args.train:
        stacks = build_stacks(config, build_grid(config))
        targets = sorted({sid for sid, st in stacks.items() for s in missing if s.run_id in st.runs})
        print(f"No checkpoint under {results}/runs for: " + ", ".join(s.run_id for s in missing) + ".\n"
              "Train them with the workflow (into results/ of the repository; each job trains all seeds of "
              "its batch size):\n"
              f"    cd {REPO} && .venv/bin/snakemake --cores 2 --configfile {args.config} "
              + " ".join(f"results/stacks/{t}.json" for t in targets)
              + f"\nor rerun this script with --train, which trains just these runs into {results}/runs "
              "with batchlab.train.loop.train_run (a few minutes on a CPU).")
        return 2
    if missing:
        from batchlab.train.loop import train_run

        for spec in missing:
            print(f"training {spec.run_id} ...", flush=True)
            train_run(spec, data_path, results / "runs" / spec.run_id, device="cpu", progress=False)

    data = load_prepared(data_path)
    dim = args.subspace_dim
    space = "full space" if dim is None else f"random subspace p={dim}"
    print(f"study {args.study}, {space}, analysis subset n={cfg['n_examples']} (seed {cfg['seed']}), "
          f"bn_mode {cfg['bn_mode']}, torch threads {args.threads}, OPENBLAS_NUM_THREADS "
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"long search: {args.long_starts} starts, each to {args.long_max_iter} iterations or no gain "
          f"(converged measure: {CONVERGED_N_STARTS} starts screened, see batchlab.analysis.sharpness)\n")
    header = ("| seed | run | eps | f(x) | paper phi | converged phi | long phi | paper/long | converged/long "
              "| n_fev paper / conv / long | s paper / conv / long |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    table: dict[tuple[int, str, float], tuple[SharpnessResult, SharpnessResult, SharpnessResult]] = {}
    spread: list[str] = []
    for seed, sb, lb in pairs:
        for name, spec in (("SB", sb), ("LB", lb)):
            run_dir = results / "runs" / spec.run_id
            d = data.train_fraction(spec.train_fraction)
            x, y = analysis_subset(d, cfg["n_examples"], cfg["seed"])
            model = build_model(spec.model, d.input_shape, d.num_classes, spec.bn_batch_size)
            model.load_state_dict(io.load_torch(run_dir / "final.pt", map_location="cpu")["model"])
            obj = ModelObjective(model, x, y, bn_mode=cfg["bn_mode"])
            for eps in args.epsilons:
                s = cfg["seed"]
                paper, tp = timed(eps_sharpness, obj, eps, dim, max_iter=cfg["sharpness"]["max_iter"], seed=s)
                conv, tc = timed(eps_sharpness_converged, obj, eps, dim, seed=s)
                long, tl = timed(eps_sharpness_converged, obj, eps, dim, n_starts=args.long_starts,
                                 screen_iter=args.long_max_iter, n_keep=1, max_iter=args.long_max_iter,
                                 rtol=0.0, seed=s)
                table[seed, name, eps] = paper, conv, long
                print(f"| {seed} | {name} bs{spec.batch_size} | {eps:g} | {paper.loss:.5f} | {paper.value:.4f} "
                      f"| {conv.value:.4f} | {long.value:.4f} | {paper.value / long.value:.3f} "
                      f"| {conv.value / long.value:.3f} | {paper.n_fev} / {conv.n_fev} / {long.n_fev} "
                      f"| {tp:.2f} / {tc:.1f} / {tl:.0f} |", flush=True)
                if args.measure_seeds and dim is None:
                    ratios = [eps_sharpness_converged(obj, eps, seed=k).value / long.value
                              for k in range(args.measure_seeds)]
                    spread.append(f"seed {seed} {name} eps {eps:g}: converged/long over measure seeds "
                                  f"0..{args.measure_seeds - 1}: min {min(ratios):.3f}, max {max(ratios):.3f}")

    print("\nLB/SB ratio of phi")
    print("| seed | eps | paper | converged | long |")
    print("|---|---|---|---|---|")
    for seed, _, _ in pairs:
        for eps in args.epsilons:
            sb, lb = table[seed, "SB", eps], table[seed, "LB", eps]
            print(f"| {seed} | {eps:g} | " + " | ".join(f"{l.value / s.value:.3f}" for s, l in zip(sb, lb)) + " |")
    if spread:
        print("\n" + "\n".join(spread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
