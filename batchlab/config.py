"""The config: validation against the JSON schema, then expansion into a grid of runs.

`check_config` fills the schema's defaults in place (through `snakemake.utils.validate`)
and stops on the first problem with a message that names the offending key. `build_grid`
turns every study into its runs: the product of models x batch sizes x BN batch sizes x
LR rules x base LRs x seeds. Each run's `run_id` is its readable directory under
`results/runs/`, e.g. `demo/cnn/bs64/linear/lr0.1/seed0`.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchlab.lr_rules import scaled_lr
from batchlab.models import has_batchnorm

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
MNIST1D_MODELS = ("mlp", "cnn", "gru")
CIFAR_TRAIN_SIZE = 50_000


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def check_config(config: dict, schema_path: str | os.PathLike = SCHEMA_PATH) -> dict:
    """Validate `config` against the schema (filling defaults in place), then check what the schema cannot."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(Path(schema_path).resolve()), set_default=True)
    except WorkflowError as exc:
        err = exc.__cause__ or exc.__context__  # snakemake folds the ValidationError into text; the original rides here
        if not isinstance(err, jsonschema.ValidationError):
            raise
        raise ConfigError(f"invalid config at '{_key(err.absolute_path)}': {err.message}") from None
    for name, study in config["studies"].items():
        _check_study(name, study, config["datasets"])
    return config


def dataset_train_size(dataset: str, datasets: dict) -> int:
    if dataset == "mnist1d":
        return datasets["mnist1d"]["n_train"]
    return CIFAR_TRAIN_SIZE


def _check_study(name: str, study: dict, datasets: dict) -> None:
    where = f"studies.{name}"
    dataset = study["dataset"]
    if dataset != "mnist1d" and dataset not in datasets:
        raise ConfigError(f"invalid config at '{where}.dataset': {dataset} needs a 'datasets.{dataset}' entry with its root")
    for model in study["models"]:
        if (model in MNIST1D_MODELS) != (dataset == "mnist1d"):
            raise ConfigError(f"invalid config at '{where}.models': model {model!r} does not take {dataset} inputs")
    opt = study["optimizer"]
    if opt["nesterov"] and (opt["name"] != "sgd" or opt["momentum"] == 0):
        raise ConfigError(f"invalid config at '{where}.optimizer.nesterov': Nesterov needs SGD with momentum > 0")
    n_train = dataset_train_size(dataset, datasets)
    for b in study["batch_sizes"]:
        if b > n_train:
            raise ConfigError(f"invalid config at '{where}.batch_sizes': {b} is larger than the {n_train} training examples")
    bn_sizes = [m for m in study["bn_batch_sizes"] if m is not None]
    if bn_sizes:
        no_bn = [m for m in study["models"] if not has_batchnorm(m)]
        if no_bn:
            raise ConfigError(f"invalid config at '{where}.bn_batch_sizes': models {no_bn} have no BatchNorm")
        for m, b in itertools.product(bn_sizes, study["batch_sizes"]):
            if m <= b and b % m:
                raise ConfigError(f"invalid config at '{where}.bn_batch_sizes': {m} does not divide batch size {b}")


@dataclass
class RunSpec:
    """One point of a study's grid: everything a training run needs to know."""

    study: str
    dataset: str
    model: str
    batch_size: int
    bn_batch_size: int | None
    lr_rule: str
    base_lr: float
    ref_batch_size: int
    seed: int
    optimizer: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)
    divergence: dict = field(default_factory=dict)

    @property
    def lr(self) -> float:
        """The peak LR of this run, after the LR rule."""
        return scaled_lr(self.lr_rule, self.base_lr, self.batch_size, self.ref_batch_size)

    @property
    def run_id(self) -> str:
        bn = f"/bn{self.bn_batch_size}" if self.bn_batch_size is not None else ""
        return f"{self.study}/{self.model}/bs{self.batch_size}{bn}/{self.lr_rule}/lr{self.base_lr:g}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(**d)


def study_runs(name: str, study: dict) -> list[RunSpec]:
    shared = {k: study[k] for k in ("optimizer", "budget", "schedule", "eval", "checkpoints", "divergence")}
    runs = []
    for model, b, m, rule, lr, seed in itertools.product(
        study["models"], study["batch_sizes"], study["bn_batch_sizes"], study["lr_rules"], study["base_lrs"], study["seeds"]
    ):
        if m is not None and m > b:
            continue  # a BN sub-batch larger than the SGD batch does not exist
        runs.append(
            RunSpec(
                study=name, dataset=study["dataset"], model=model, batch_size=b, bn_batch_size=m, lr_rule=rule,
                base_lr=float(lr), ref_batch_size=study["ref_batch_size"], seed=seed, **shared,
            )
        )
    return runs


def build_grid(config: dict) -> dict[str, RunSpec]:
    """All runs of all studies of a checked config, keyed by run_id."""
    grid: dict[str, RunSpec] = {}
    for name, study in config["studies"].items():
        for run in study_runs(name, study):
            if run.run_id in grid:
                raise ConfigError(f"invalid config at 'studies.{name}': two runs share the id {run.run_id}")
            grid[run.run_id] = run
    return grid
