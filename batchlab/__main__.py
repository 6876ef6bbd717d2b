"""Command line of batchlab:

    python -m batchlab estimate CONFIG [CONFIG ...] [--throughput CSV] [--device-name STR]
    python -m batchlab smoke-data CONFIG [CONFIG ...]

`estimate` prints what a config will cost before it runs: runs, jobs, run-steps and the
estimated device-hours from the throughput table of `benchmarks/throughput.py` (see
batchlab.estimate). `smoke-data` writes small generated releases in the real formats
(batchlab.data.fake_release) into every data set root of the config that does not exist
yet, for a preset's smoke variant. Several CONFIGs are laid over each other in order, as
snakemake does with several --configfile. Exit status 2 on a missing file or an invalid config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_THROUGHPUT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.csv"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


class UsageError(Exception):
    """A command line that cannot run; the message says why."""


def load_configs(paths: list[str]) -> dict:
    """The checked config of one or more YAML files, each laid over the ones before it."""
    import yaml
    from snakemake.utils import update_config

    from batchlab.config import ConfigError, check_config

    config: dict = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        try:
            layer = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(layer, dict):
            raise UsageError(f"{path} does not hold a mapping of config keys")
        update_config(config, layer)
    try:
        return check_config(config)
    except ConfigError as exc:
        raise UsageError(f"{' + '.join(paths)}: {exc}") from None


def smoke_data_command(args: argparse.Namespace) -> int:
    from batchlab.data.fake_release import write_smoke_releases

    try:
        config = load_configs(args.config)
    except UsageError as exc:
        return _fail(str(exc))
    written = write_smoke_releases(config["datasets"])
    roots = {name: opts.get("root") for name, opts in config["datasets"].items()}
    print(f"fake releases written: {', '.join(f'{n} in {roots[n]}' for n in written) or 'none (every root exists)'}")
    return 0


def estimate_command(args: argparse.Namespace) -> int:
    from batchlab.estimate import estimate, format_estimate, read_throughput

    try:
        config = load_configs(args.config)
    except UsageError as exc:
        return _fail(str(exc))
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
    args = parser.parse_args(argv)
    if args.command == "smoke-data":
        return smoke_data_command(args)
    args.throughput_given = args.throughput is not None
    if args.throughput is None:
        args.throughput = DEFAULT_THROUGHPUT
    return estimate_command(args)


if __name__ == "__main__":
    sys.exit(main())
