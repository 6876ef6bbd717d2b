"""Command line of batchlab:

    python -m batchlab estimate CONFIG [CONFIG ...] [--throughput CSV] [--device-name STR] [--slurm-profile YAML]
    python -m batchlab smoke-data CONFIG [CONFIG ...]
    python -m batchlab check-config CONFIG [CONFIG ...] [--throughput CSV]
    python -m batchlab forget RUN_ID [RUN_ID ...] [--results DIR]

`estimate` prints what a config will cost before it runs: runs, jobs, run-steps and the
estimated device-hours from the throughput table of `benchmarks/throughput.py` (see
batchlab.estimate), first saying which data sizes are official fallbacks rather than measured
and whether the longest jobs fit the SLURM profile's runtime. `smoke-data` writes small
generated releases in the real formats (batchlab.data.fake_release) into every data set root
of the config that does not exist yet, for a preset's smoke variant. `check-config` refuses,
before snakemake reads them, config files that are not a YAML mapping (snakemake's own refusal
names no file) and configs that the Snakefile would refuse; a valid config gets one more line,
its estimated device-hours. Several CONFIGs are laid over each other in order, as snakemake
does with several --configfile. Exit status 2, with one line naming the file, on a missing,
unreadable, non-YAML or invalid config. `forget` removes runs (their directories and their stacks'
markers, batchlab.forget) so that the next snakemake trains them again: what a damaged file in a
run's directory asks for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_THROUGHPUT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.csv"
SLURM_PROFILE = Path(__file__).resolve().parents[1] / "workflow" / "profiles" / "slurm" / "config.yaml"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def smoke_data_command(args: argparse.Namespace) -> int:
    from batchlab.config import load_configs
    from batchlab.data.fake_release import write_smoke_releases

    config = load_configs(args.config)
    written = write_smoke_releases(config["datasets"])
    roots = {name: opts.get("root") for name, opts in config["datasets"].items()}
    print(f"fake releases written: {', '.join(f'{n} in {roots[n]}' for n in written) or 'none (every root exists)'}")
    return 0


def check_config_command(args: argparse.Namespace) -> int:
    from batchlab.config import build_grid, build_pairs, build_stacks, check_data_roots, load_configs, naming_files

    config = load_configs(args.config)
    with naming_files(args.config):  # what else the Snakefile refuses before any job
        check_data_roots(config)
        runs = build_grid(config)
        build_pairs(config, runs)
    print(f"{' + '.join(args.config)}: valid, {len(runs)} runs in {len(build_stacks(config, runs))} training jobs")
    print(device_hours_line(config, Path(args.throughput)))
    return 0


def device_hours_line(config: dict, throughput: Path) -> str:
    """One line: the config's estimated device-hours from the throughput table, or why there are none. The
    config is valid already, so nothing here stops it."""
    from batchlab.estimate import estimate, one_line, read_throughput

    if not throughput.is_file():
        return f"estimated device-hours: unknown (no {throughput}; benchmarks/throughput.py writes it)"
    try:
        return one_line(estimate(config, read_throughput(throughput), source=str(throughput)))
    except ValueError as exc:  # a table without the columns, or without rows
        return f"estimated device-hours: unknown ({exc})"


def estimate_command(args: argparse.Namespace) -> int:
    from batchlab.config import load_configs
    from batchlab.estimate import estimate, format_estimate, read_throughput

    config = load_configs(args.config)
    config_path = " + ".join(args.config)

    table, note = None, ""
    throughput = Path(args.throughput)
    if throughput.is_file():
        try:
            table = read_throughput(throughput)
        except ValueError as exc:
            return _fail(str(exc))
    elif args.throughput_given:
        return _fail(f"throughput table {throughput} does not exist; write it with benchmarks/throughput.py")
    else:
        note = f"(no {throughput}) "
    if args.slurm_profile is not None and not Path(args.slurm_profile).is_file():
        return _fail(f"SLURM profile {args.slurm_profile} does not exist; pass --slurm-profile none to skip the check")
    try:
        result = estimate(config, table, args.device_name, source=str(throughput))
        text = format_estimate(result, args.slurm_profile)
    except ValueError as exc:  # a device name that matches none or several, a data set's bad options, a runtime
        return _fail(str(exc))
    print(f"estimate for {config_path} {note}".rstrip())
    print(text)
    return 0


def forget_command(args: argparse.Namespace) -> int:
    from batchlab.forget import forget

    try:
        removed = forget(Path(args.results), args.run_id)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    for path in removed:
        print(f"removed {path}")
    print(f"snakemake trains {'them' if len(args.run_id) > 1 else 'it'} again when it next runs, with what reads "
          f"{'them' if len(args.run_id) > 1 else 'it'}; the other runs of a stack are kept")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchlab", description="batchlab command line")
    commands = parser.add_subparsers(dest="command", required=True)
    est = commands.add_parser("estimate", help="runs, jobs, steps and estimated device-hours of a config",
                              description="Runs, jobs, run-steps and estimated device-hours of a config, from the "
                                          "throughput table that benchmarks/throughput.py writes.")
    est.add_argument("config", nargs="+", help="the workflow config (YAML), e.g. config/golmant.yaml; several are laid "
                                               "over each other in order")
    est.add_argument("--throughput", default=None, help=f"throughput table (default: {DEFAULT_THROUGHPUT})")
    est.add_argument("--device-name", default=None,
                     help="use the rows of the device whose name contains this (default: the device with most rows)")
    est.add_argument("--slurm-profile", default=str(SLURM_PROFILE),
                     help=f"compare the longest jobs with this snakemake profile's runtime (default: {SLURM_PROFILE}; "
                          f"'none' skips it)")
    smoke = commands.add_parser("smoke-data", help="fake releases in the real formats for a smoke variant",
                                description="Write small generated releases in the real on-disk formats into every "
                                            "data set root of the config that does not exist yet (pipeline checks "
                                            "only: their numbers mean nothing).")
    smoke.add_argument("config", nargs="+", help="e.g. config/golmant.yaml config/smoke/golmant.yaml")
    check = commands.add_parser("check-config", help="refuse a config that cannot run, before snakemake reads it",
                                description="Read and check the config files as the workflow will, laid over each "
                                            "other in order; one line naming the file and what is wrong, exit 2, "
                                            "when one is not a YAML mapping or the config is invalid.")
    check.add_argument("config", nargs="+", help="e.g. config.yaml, or config/golmant.yaml config/smoke/golmant.yaml")
    check.add_argument("--throughput", default=str(DEFAULT_THROUGHPUT),
                       help=f"throughput table of the estimated device-hours (default: {DEFAULT_THROUGHPUT})")
    fgt = commands.add_parser("forget", help="remove runs so that the workflow trains them again",
                              description="Remove each run's directory and the marker of the stack it trained in: "
                                          "the next snakemake trains it again and redoes what reads it (the stack's "
                                          "other runs are kept). For a run with a damaged file.")
    fgt.add_argument("run_id", nargs="+", help="e.g. demo/mlp/bs64/constant/lr0.1/seed0, as the error names it")
    fgt.add_argument("--results", default="results", help="the workflow's results folder (default: results)")
    args = parser.parse_args(argv)
    if args.command == "estimate":
        args.throughput_given = args.throughput is not None
        if args.throughput is None:
            args.throughput = DEFAULT_THROUGHPUT
        if args.slurm_profile.lower() == "none":
            args.slurm_profile = None
    from batchlab.config import ConfigError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:  # a config file that is not a YAML mapping, or an invalid config: one line naming it
        return _fail(str(exc))


COMMANDS = {"estimate": estimate_command, "smoke-data": smoke_data_command, "check-config": check_config_command,
            "forget": forget_command}


if __name__ == "__main__":
    sys.exit(main())
