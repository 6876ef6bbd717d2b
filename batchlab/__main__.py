"""Command line of batchlab:

    python -m batchlab estimate CONFIG [CONFIG ...] [--throughput CSV] [--device-name STR]
    python -m batchlab smoke-data CONFIG [CONFIG ...]
    python -m batchlab check-config CONFIG [CONFIG ...]

`estimate` prints what a config will cost before it runs: runs, jobs, run-steps and the
estimated device-hours from the throughput table of `benchmarks/throughput.py` (see
batchlab.estimate). `smoke-data` writes small generated releases in the real formats
(batchlab.data.fake_release) into every data set root of the config that does not exist
yet, for a preset's smoke variant. `check-config` refuses, before snakemake reads them, config
files that are not a YAML mapping (snakemake's own refusal names no file) and configs that the
Snakefile would refuse. Several CONFIGs are laid over each other in order, as snakemake does
with several --configfile. Exit status 2, with one line naming the file, on a missing, unreadable,
non-YAML or invalid config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_THROUGHPUT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.csv"


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
    return 0


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
    try:
        result = estimate(config, table, args.device_name, source=str(throughput))
    except ValueError as exc:  # a device name that matches none or several, a data set's bad options
        return _fail(str(exc))
    print(f"estimate for {config_path} {note}".rstrip())
    print(format_estimate(result))
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
    args = parser.parse_args(argv)
    if args.command == "estimate":
        args.throughput_given = args.throughput is not None
        if args.throughput is None:
            args.throughput = DEFAULT_THROUGHPUT
    from batchlab.config import ConfigError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:  # a config file that is not a YAML mapping, or an invalid config: one line naming it
        return _fail(str(exc))


COMMANDS = {"estimate": estimate_command, "smoke-data": smoke_data_command, "check-config": check_config_command}


if __name__ == "__main__":
    sys.exit(main())
