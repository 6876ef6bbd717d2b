"""The config: validation against the JSON schema, then expansion into a grid of runs.

`load_config_file` reads one YAML file, refusing in one line that names it a file that is not
a mapping (binary, empty, broken YAML). `check_config` fills the schema's defaults in place
(through `snakemake.utils.validate`) and stops on the first problem with a message that names
the offending key. `build_grid`
turns every study into its runs: the product of training fractions x models x batch sizes x BN batch sizes x
LR rules x base LRs x seeds. Each run's `run_id` is its readable directory under
`results/runs/`, e.g. `demo/cnn/bs64/linear/lr0.1/seed0`.
"""

from __future__ import annotations

import itertools
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchlab.data.catalog import DatasetInfo, dataset_info
from batchlab.devices import device_type
from batchlab.lr_rules import scaled_lr, warms_up, warmup_length
from batchlab.models import MODEL_INPUTS, RECURRENT_MODELS, check_bn_batch_size, check_model_options, uses_batchnorm, uses_dropout

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
GENERATED_DATASETS = ("mnist1d", "shapes", "pydoc_text")  # made or shipped locally: no datasets entry needed


# run filter key -> the study's list it selects from
FILTER_KEYS = {"models": "models", "batch_sizes": "batch_sizes", "lr_rules": "lr_rules", "base_lrs": "base_lrs", "seeds": "seeds",
               "train_fractions": "train_fractions"}


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


def _unique_keys_loader():
    """A SafeLoader that refuses a key repeated in one mapping: YAML's loaders keep the last, so a study named
    twice would silently be one study."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:  # as written: a merge (<<: *anchor) may be overridden, a key may not
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeys


def load_config_file(path: str | os.PathLike) -> dict:
    """The mapping of one YAML config file; a ConfigError of one line naming the file when it has none.

    snakemake refuses such a file too, but before the Snakefile runs and without naming it (a binary
    file gets a traceback), so `python -m batchlab check-config` asks first."""
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not a text file: byte {exc.object[exc.start]:#04x} at "
                          f"offset {exc.start} is not UTF-8") from None
    try:
        data = yaml.load(text, Loader=_unique_keys_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty: a config is a mapping of keys such as studies")
    if not isinstance(data, dict):
        what = "a list" if isinstance(data, list) else f"the single value {str(data)[:40]!r}"
        raise ConfigError(f"config file {path} holds {what}, not a mapping of config keys")
    return unaliased(data)


def unaliased(data: Any) -> Any:
    """`data` with every mapping and list its own object. A YAML anchor (`<<: *study`) makes two studies
    share their nested mappings, and laying another file over one of them (snakemake's update_config
    changes mappings in place) would change the other too."""
    import json

    return json.loads(json.dumps(data))


def reload_configs(config: dict, paths: list[str], overrides: dict | None) -> None:
    """Rebuild snakemake's merged `config` from the files in `paths`, each unaliased, then `overrides`."""
    from snakemake.utils import update_config

    rebuilt: dict = {}
    for path in paths:
        update_config(rebuilt, load_config_file(path))
    update_config(rebuilt, unaliased(overrides or {}))
    config.clear()
    config.update(rebuilt)


def _yaml_problem(exc) -> str:
    """What PyYAML found wrong, on one line (its own message spans several, quoting the line)."""
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):  # a control character: a binary file that happens to be UTF-8
        return f"character #x{exc.character:04x} at offset {exc.position} is not allowed"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    return " ".join(str(exc).split())


def load_configs(paths: list[str | os.PathLike]) -> dict:
    """The checked config of one or more YAML files, each laid over the ones before it, as snakemake
    does with several --configfile; every ConfigError names the file or files."""
    from snakemake.utils import update_config

    config: dict = {}
    for path in paths:
        update_config(config, load_config_file(path))
    with naming_files(paths):
        return check_config(config)


@contextmanager
def naming_files(paths, overrides: bool = False):
    """Prefix the ConfigError raised inside with the config files (and --config overrides) it came from."""
    try:
        yield
    except ConfigError as exc:
        source = " + ".join(map(str, paths)) + (" + --config" if overrides else "")
        raise ConfigError(f"{source or '--config'}: {exc}") from None


def job_device(name: str) -> str:
    """The device a job computes on: `auto` resolved on this machine, `cpu` and `cuda` as asked.

    The jobs that compute on the device carry it in their params, and snakemake reruns a job whose
    params changed. What counts is the hardware, not how the config spells it: `auto` and `cpu` on a
    CPU machine (`auto` and `cuda` on a GPU one) are one device, and switching between them reruns
    nothing. A config that asks for other hardware (cpu -> cuda) reruns those jobs there; the trainer
    still keeps its finished members (batchlab.train.run_files.result_hash: a run is its config, not
    where it ran, and its run.json names the device), and the analyses are measured again.
    Every snakemake process that reads the Snakefile resolves it on its own machine: the one that
    decides what reruns (and records the params), and, under a cluster executor, the one that runs
    the job on its node, so each job computes where it runs (CUDA on a GPU node, the CPU elsewhere).
    """
    return device_type(name) if name == "auto" else name


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
    if (bad := next(_non_finite(config), None)) is not None:
        raise ConfigError(f"invalid config at '{_key(bad[0])}': {bad[1]} is not a finite number")
    for name, study in config["studies"].items():
        _check_study(name, study, config["datasets"])
    if (runs := grid_size(config)) > config["max_runs"]:
        raise ConfigError(f"invalid config at 'max_runs': the grid has {runs:,} runs, more than max_runs "
                          f"({config['max_runs']:,}); if you mean it, set max_runs: {runs} (and see `python -m batchlab "
                          f"estimate` first)")
    return config


def grid_size(config: dict) -> int:
    """How many runs build_grid makes of a checked config, counted without making them: in microseconds where a
    grid of a million runs takes minutes to build and plan."""
    total = 0
    for study in config["studies"].values():
        pairs = sum(1 for b in study["batch_sizes"] for m in study["bn_batch_sizes"] if m is None or m <= b)
        total += pairs * math.prod(len(study[key]) for key in ("train_fractions", "models", "lr_rules", "base_lrs",
                                                               "seeds"))
    return total


def _non_finite(value, path: tuple = ()):
    """(key path, value) of each NaN or infinite number in a config: the schema's bounds let NaN through, since
    no comparison with it fails."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite(item, (*path, i))


def study_dataset_info(dataset: str, datasets: dict) -> DatasetInfo:
    """What a study's data set looks like (batchlab.data.catalog), before any file is read."""
    return dataset_info(dataset, datasets.get(dataset, {}))


def dataset_train_size(dataset: str, datasets: dict) -> int:
    return study_dataset_info(dataset, datasets).n_train


def _two_batch_noise_scale(study: dict, ns: dict, n_train: int) -> bool:
    """Whether some run's noise scale may come from the two-batch estimator (batchlab.analysis.noise_scale),
    whose batches of b_big are drawn from the training set; the exact method needs no b_big."""
    no_per_example = [m for m in study["models"] if m in RECURRENT_MODELS
                      or (study["analysis"]["bn_mode"] == "batch" and uses_batchnorm(m))]
    return ns["method"] == "two_batch" or (ns["method"] == "auto" and (n_train > ns["exact_max_examples"] or bool(no_per_example)))


def _check_study(name: str, study: dict, datasets: dict) -> None:
    where = f"studies.{name}"
    dataset = study["dataset"]
    if dataset not in GENERATED_DATASETS and dataset not in datasets:
        raise ConfigError(f"invalid config at '{where}.dataset': {dataset} needs a 'datasets.{dataset}' entry with its root")
    try:
        info = study_dataset_info(dataset, datasets)
    except ValueError as exc:  # a damaged file under the root, or an option the catalog refuses
        raise ConfigError(f"invalid config at 'datasets.{dataset}': {exc}") from None
    for model, options in study["model_options"].items():
        if model not in study["models"]:
            raise ConfigError(f"invalid config at '{where}.model_options.{model}': {model!r} is not among the study's models")
        try:
            check_model_options(model, options)
        except ValueError as exc:
            raise ConfigError(f"invalid config at '{where}.model_options.{model}': {exc}") from None
    for model in study["models"]:
        if (study["analysis"]["enabled"] and study["analysis"]["bn_mode"] == "batch"
                and uses_dropout(model, study["model_options"].get(model))):
            raise ConfigError(f"invalid config at '{where}.analysis.bn_mode': model {model!r} has dropout, which a "
                              "train-mode analysis would apply with one fixed mask; use bn_mode: eval, or set its dropout "
                              f"to 0 in model_options.{model}")
        if MODEL_INPUTS[model] != info.inputs:
            raise ConfigError(f"invalid config at '{where}.models': model {model!r} takes {MODEL_INPUTS[model]} inputs, "
                              f"but {dataset} holds {info.inputs} data")
    opt = study["optimizer"]
    if opt["nesterov"] and (opt["name"] != "sgd" or opt["momentum"] == 0):
        raise ConfigError(f"invalid config at '{where}.optimizer.nesterov': Nesterov needs SGD with momentum > 0")
    n_train = max(1, round(min(study["train_fractions"]) * info.n_train))  # as Dataset.train_fraction keeps
    for b in study["batch_sizes"]:
        if b > n_train:
            raise ConfigError(f"invalid config at '{where}.batch_sizes': {b} is larger than the {n_train} training examples"
                              + (" of the smallest training fraction" if n_train < info.n_train else ""))
    _check_schedule(where, study, n_train)
    _check_language_model(where, study, info)
    ns, b_big = study["analysis"]["noise_scale"], study["analysis"]["noise_scale"]["b_big"]
    if (study["analysis"]["enabled"] and "noise_scale" in study["analysis"]["measures"] and b_big > n_train
            and _two_batch_noise_scale(study, ns, n_train)):
        raise ConfigError(f"invalid config at '{where}.analysis.noise_scale.b_big': {b_big} is larger than the {n_train} "
                          f"training examples it would be drawn from")
    for section in ("analysis", "interpolation"):
        for key, flt in study[section].items():
            if isinstance(flt, dict) and key in ("runs", "along_training", "select"):
                for coord, values in flt.items():
                    unknown = [v for v in values if v not in study[FILTER_KEYS[coord]]]
                    if unknown:
                        raise ConfigError(f"invalid config at '{where}.{section}.{key}.{coord}': {unknown} not in the study's {FILTER_KEYS[coord]}")
    ns = study["analysis"]["noise_scale"]
    if ns["b_small"] >= ns["b_big"]:
        raise ConfigError(f"invalid config at '{where}.analysis.noise_scale': b_small ({ns['b_small']}) must be below b_big ({ns['b_big']})")
    if ns["max_draws"] < ns["n_draws"]:
        raise ConfigError(f"invalid config at '{where}.analysis.noise_scale': max_draws ({ns['max_draws']}) must be at least n_draws ({ns['n_draws']})")
    bn_sizes = [m for m in study["bn_batch_sizes"] if m is not None]
    if bn_sizes:
        for model in study["models"]:
            try:
                check_bn_batch_size(model, bn_sizes[0])
            except ValueError as exc:
                raise ConfigError(f"invalid config at '{where}.bn_batch_sizes': {exc}") from None
        for m, b in itertools.product(bn_sizes, study["batch_sizes"]):
            if m <= b and b % m:
                raise ConfigError(f"invalid config at '{where}.bn_batch_sizes': {m} does not divide batch size {b}")


def _check_language_model(where: str, study: dict, info: DatasetInfo) -> None:
    """word_language_model's protocol only on a language model: carried state over whole streams (no training
    fraction, no evaluation subsets), the plateau anneal only with a validation split to watch."""
    lm = study.get("language_model", {})
    carry, anneal = lm.get("carry_state", False), lm.get("plateau_anneal")
    for key, on in (("carry_state", carry), ("plateau_anneal", anneal is not None)):
        if on and info.task != "language_model":
            raise ConfigError(f"invalid config at '{where}.language_model.{key}': {study['dataset']} is not a language "
                              f"model ({info.task})")
    if anneal is not None and info.n_valid is None:
        raise ConfigError(f"invalid config at '{where}.language_model.plateau_anneal': {study['dataset']} has no "
                          f"validation split to watch (wikitext2 and ptb have one, where the release's valid file is there)")
    if not carry:
        return
    if any(f != 1 for f in study["train_fractions"]):
        raise ConfigError(f"invalid config at '{where}.train_fractions': language_model.carry_state trains on the "
                          f"whole stream, so every training fraction must be 1.0")
    for key in ("train_subset", "test_subset"):
        if study["eval"].get(key) is not None:
            raise ConfigError(f"invalid config at '{where}.eval.{key}': language_model.carry_state evaluates whole "
                              f"streams; set it to null")
    columns = lm.get("eval_columns", 10)
    shortest = min(n for n in (info.n_train, info.n_test, info.n_valid if anneal is not None else None) if n is not None)
    if columns > shortest:
        raise ConfigError(f"invalid config at '{where}.language_model.eval_columns': {columns} columns, but a split "
                          f"has only {shortest} windows")


def _check_schedule(where: str, study: dict, n_train: int) -> None:
    """Warm-up given once (steps or a fraction), and shorter than the shortest run whose LR rule warms up."""
    schedule, budget = study["schedule"], study["budget"]
    if schedule["warmup_fraction"] is not None and schedule["warmup_steps"]:
        raise ConfigError(f"invalid config at '{where}.schedule.warmup_fraction': give the warm-up as warmup_steps "
                          f"({schedule['warmup_steps']}) or as warmup_fraction, not both")
    if not any(warms_up(schedule, rule) for rule in study["lr_rules"]):
        return
    shortest = budget["steps"] if "steps" in budget else budget["epochs"] * (n_train // max(study["batch_sizes"]))
    warmup = warmup_length(schedule, shortest)
    if warmup >= shortest:
        key = "warmup_steps" if schedule["warmup_fraction"] is None else "warmup_fraction"
        raise ConfigError(f"invalid config at '{where}.schedule.{key}': {warmup} warm-up steps, but the shortest "
                          f"run (batch size {max(study['batch_sizes'])}) has only {shortest} steps")


def check_data_roots(config: dict) -> None:
    """Refuse, before any job, a data set read from a `root` that does not exist where nothing may download it:
    one whose `download` is false, or one that cannot be downloaded at all (a text corpus, a Debian package's
    files). Relative roots are read from the current directory: snakemake's working directory.
    """
    used = {study["dataset"] for study in config["studies"].values()}
    for name in sorted(used):
        options = config["datasets"].get(name, {})
        if "root" not in options or options.get("download") is True or Path(options["root"]).exists():
            continue
        why = "and download is false" if "download" in options else "and this data set cannot be downloaded"
        fix = "set download: true" if "download" in options else "put the release there"
        raise ConfigError(f"invalid config at 'datasets.{name}.root': {options['root']} does not exist (from "
                          f"{Path.cwd()}) {why}; point it at the release or {fix}")


# Settings that decide how a run is kept safe, never what it computes: a change to one leaves the
# finished runs, their jobs and everything downstream as they are. section -> keys.
RESULT_FREE = {"checkpoints": ("resume_every_s",)}


# Top-level keys that decide where and how jobs run, never what they compute.
PLACEMENT_KEYS = ("gpus", "gpus_per_run", "slots_per_gpu", "gpu_lock_dir", "max_runs")


def results_config(config: dict) -> dict:
    """The config but its settings that cannot change a result (PLACEMENT_KEYS, each study's RESULT_FREE): what
    the jobs that read the whole config or its studies carry in their params."""
    return {**{key: value for key, value in config.items() if key not in PLACEMENT_KEYS},
            "studies": {name: without_result_free(study) for name, study in config["studies"].items()}}


def without_result_free(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: ({k: v for k, v in value.items() if k not in RESULT_FREE[key]} if key in RESULT_FREE else value)
            for key, value in spec.items()}


def job_run_spec(spec: dict[str, Any], config: dict) -> "RunSpec":
    """The RunSpec of a job's `result_dict` spec, its result-free settings read again from the config."""
    study = config["studies"][spec["study"]]
    return RunSpec.from_dict({key: ({**value, **{k: study[key][k] for k in RESULT_FREE[key]}} if key in RESULT_FREE
                                    else value) for key, value in spec.items()})


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
    train_fraction: float = 1.0  # of the data set's training examples (Golmant et al. 2018: 100%, 50%, 25%)
    optimizer: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)
    divergence: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # the data set's options but where it lies: another setting, another run
    model_options: dict = field(default_factory=dict)  # the model's options set by the study (batchlab.models.model_options)
    language_model: dict = field(default_factory=dict)  # word_language_model's protocol: carry_state, plateau_anneal

    @property
    def lr(self) -> float:
        """The peak LR of this run, after the LR rule."""
        return scaled_lr(self.lr_rule, self.base_lr, self.batch_size, self.ref_batch_size)

    @property
    def run_id(self) -> str:
        return f"{self.study}/{self.model}/bs{self.batch_size}{_group_suffix(self)}/{self.lr_rule}/lr{self.base_lr:g}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The spec but its settings that cannot change a result (RESULT_FREE): what a job's params carry, so that
        changing one of them reruns nothing, and what a run's config hash is of."""
        return without_result_free(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(**d)


def _group_suffix(run: RunSpec) -> str:
    """The path parts beyond model and batch size that set a run's stack: BN batch size and training fraction."""
    bn = f"/bn{run.bn_batch_size}" if run.bn_batch_size is not None else ""
    fraction = f"/frac{run.train_fraction:g}" if run.train_fraction != 1 else ""
    return bn + fraction


# Where a data set is read from and how it got there: the same files elsewhere are the same data.
DATA_LOCATION_KEYS = ("root", "download", "verify_checksums")


def study_runs(name: str, study: dict, datasets: dict | None = None) -> list[RunSpec]:
    shared = {k: study[k] for k in ("optimizer", "budget", "schedule", "eval", "checkpoints", "divergence", "health")}
    shared["language_model"] = dict(study.get("language_model", {}))
    options = (datasets or {}).get(study["dataset"], {})
    shared["data"] = {k: v for k, v in options.items() if k not in DATA_LOCATION_KEYS}
    runs = []
    for fraction, model, b, m, rule, lr, seed in itertools.product(
        study["train_fractions"], study["models"], study["batch_sizes"], study["bn_batch_sizes"], study["lr_rules"],
        study["base_lrs"], study["seeds"],
    ):
        if m is not None and m > b:
            continue  # a BN sub-batch larger than the SGD batch does not exist
        runs.append(
            RunSpec(
                study=name, dataset=study["dataset"], model=model, batch_size=b, bn_batch_size=m, lr_rule=rule,
                base_lr=float(lr), ref_batch_size=study["ref_batch_size"], seed=seed, train_fraction=float(fraction),
                model_options=dict(study["model_options"].get(model, {})), **shared,
            )
        )
    return runs


def build_grid(config: dict) -> dict[str, RunSpec]:
    """All runs of all studies of a checked config, keyed by run_id."""
    grid: dict[str, RunSpec] = {}
    for name, study in config["studies"].items():
        for run in study_runs(name, study, config["datasets"]):
            if run.run_id in grid:
                raise ConfigError(f"invalid config at 'studies.{name}': two runs share the id {run.run_id}")
            grid[run.run_id] = run
    return grid


# --- analyses: which runs, which pairs ---------------------------------------------------

def run_matches(run: RunSpec, run_filter: dict) -> bool:
    """Whether `run` passes a run filter (each listed coordinate must be among the values)."""
    coords = {"models": run.model, "batch_sizes": run.batch_size, "lr_rules": run.lr_rule,
              "base_lrs": run.base_lr, "seeds": run.seed, "train_fractions": run.train_fraction}
    return all(coords[key] in values for key, values in run_filter.items())


def analysed_runs(config: dict, grid: dict[str, RunSpec]) -> dict[str, bool]:
    """Runs whose checkpoints are measured: run_id -> whether every checkpoint (True) or the final one only."""
    out = {}
    for run_id, run in grid.items():
        analysis = config["studies"][run.study]["analysis"]
        if analysis["enabled"] and run_matches(run, analysis["runs"]):
            out[run_id] = run_matches(run, analysis["along_training"])
    return out


@dataclass(frozen=True)
class Pair:
    """Two solutions to interpolate between: the small-batch end (alpha = 0) and the large-batch
    end (alpha = 1), chosen when the pair's job runs from `candidates`, ordered from small to
    large: the first and last healthy ones (see `pair_ends`). An explicit pair has exactly its
    two runs as candidates; an automatic one every batch size of its group."""

    pair_id: str
    study: str
    candidates: tuple[str, ...]


def pair_ends(pair: Pair, statuses: dict[str, str]) -> tuple[str, str] | None:
    """(small, large) run ids: the first and last candidates whose status is "completed".

    A diverged or stalled run is not a solution, so it is never an end of a pair; None when
    fewer than two healthy candidates are left.
    """
    healthy = [run_id for run_id in pair.candidates if statuses.get(run_id) == "completed"]
    return (healthy[0], healthy[-1]) if len(healthy) >= 2 else None


def _auto_pair_id(run: RunSpec) -> str:
    return f"{run.study}/{run.model}{_group_suffix(run)}/{run.lr_rule}/lr{run.base_lr:g}/seed{run.seed}"


def _explicit_pair_id(small: RunSpec, large: RunSpec) -> str:
    tail = large.run_id.removeprefix(f"{large.study}/").replace("/", "_")
    return f"{small.run_id}/vs_{tail}"


def _explicit_pairs(name: str, pairs: list[dict], grid: dict[str, RunSpec]) -> list[Pair]:
    out = []
    for i, p in enumerate(pairs):
        for role in ("small", "large"):
            if p[role] not in grid or grid[p[role]].study != name:
                raise ConfigError(f"invalid config at 'studies.{name}.interpolation.pairs[{i}].{role}': "
                                  f"{p[role]!r} is not a run of this study")
        small, large = grid[p["small"]], grid[p["large"]]
        if (small.model, small.bn_batch_size, small.train_fraction) != (large.model, large.bn_batch_size, large.train_fraction):
            raise ConfigError(f"invalid config at 'studies.{name}.interpolation.pairs[{i}]': the two runs must share "
                              f"one architecture, got {small.model} and {large.model}")
        out.append(Pair(_explicit_pair_id(small, large), name, (small.run_id, large.run_id)))
    return out


def _automatic_pairs(name: str, run_filter: dict, grid: dict[str, RunSpec]) -> list[Pair]:
    """Each (model, LR rule, base LR, seed, BN batch) of the selected runs, over its batch sizes."""
    groups: dict[str, list[RunSpec]] = {}
    for run in grid.values():
        if run.study == name and run_matches(run, run_filter):
            groups.setdefault(_auto_pair_id(run), []).append(run)
    return [Pair(pair_id, name, tuple(r.run_id for r in sorted(runs, key=lambda r: r.batch_size)))
            for pair_id, runs in groups.items() if len(runs) > 1]


def build_pairs(config: dict, grid: dict[str, RunSpec]) -> dict[str, Pair]:
    """The interpolation pairs of every study, keyed by a readable pair_id."""
    pairs: dict[str, Pair] = {}
    for name, study in config["studies"].items():
        interp = study["interpolation"]
        if not interp["enabled"]:
            continue
        chosen = (_explicit_pairs(name, interp["pairs"], grid) if "pairs" in interp
                  else _automatic_pairs(name, interp["select"], grid))
        pairs.update((pair.pair_id, pair) for pair in chosen)
    return pairs


# --- stacks: the unit of training work -------------------------------------------------------

@dataclass(frozen=True)
class Stack:
    """Runs of one study that share model, batch size, BN batch size and training fraction, trained in one job."""

    stack_id: str
    runs: tuple[str, ...]


def build_stacks(config: dict, grid: dict[str, RunSpec]) -> dict[str, Stack]:
    """The training jobs: each (study, model, batch size, BN batch size, training fraction) group of runs, in grid
    order, cut into stacks of at most the study's `max_stack` runs. The stacks follow from the
    config alone, so every process that reads it (a cluster job too) sees the same ones."""
    groups: dict[str, list[str]] = {}
    for run_id, run in grid.items():
        groups.setdefault(f"{run.study}/{run.model}/bs{run.batch_size}{_group_suffix(run)}", []).append(run_id)
    stacks = {}
    for group, runs in groups.items():
        size = config["studies"][grid[runs[0]].study]["max_stack"]
        for i in range(0, len(runs), size):
            stack = Stack(f"{group}/stack{i // size}", tuple(runs[i : i + size]))
            stacks[stack.stack_id] = stack
    return stacks
