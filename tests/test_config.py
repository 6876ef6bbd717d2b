import copy
import re
from pathlib import Path

import pytest
import yaml

from batchlab.config import SCHEMA_PATH, ConfigError, RunSpec, build_grid, check_config
from tests.conftest import REPO, TINY_CONFIG


def shipped_configs():
    return [REPO / "config.yaml", *sorted((REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_shipped_configs_validate_and_expand(path):
    grid = build_grid(check_config(yaml.safe_load(path.read_text())))
    assert grid


def test_demo_covers_the_acceptance_grid():
    cfg = check_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    studies = cfg["studies"]
    demo = studies["demo"]
    assert len(demo["models"]) >= 2 and len(demo["batch_sizes"]) >= 4 and len(demo["seeds"]) >= 2
    assert min(demo["batch_sizes"]) <= 16 and max(demo["batch_sizes"]) >= 512
    # Masters & Luschi: equal epochs, and an LR grid wide enough to bracket the optimum at each batch size
    assert "stop" not in demo["budget"] and len(demo["base_lrs"]) >= 3
    # Golmant's LR rules, tuned per batch size, in one study
    assert any({"constant", "linear", "sqrt"} <= set(s["lr_rules"]) for s in studies.values())


def test_demo_asks_golmant_in_three_domains_on_embedded_data():
    cfg = check_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    studies = cfg["studies"].values()
    assert {s["dataset"] for s in studies} <= {"mnist1d", "pydoc_text", "shapes"}  # nothing to download
    for dataset, model in (("pydoc_text", "lstm_lm"), ("shapes", "drn")):
        study = next(s for s in studies if s["dataset"] == dataset)
        assert model in study["models"] and len(study["batch_sizes"]) >= 4 and len(study["base_lrs"]) >= 2
        targets = study["speedup"]["targets"]
        assert targets["train_loss"][0] == "largest_batch_q25" and targets.get("test_loss")


def test_defaults_are_filled_from_the_schema(tiny_config):
    del tiny_config["studies"]["tiny"]["optimizer"]
    cfg = check_config(tiny_config)
    study = cfg["studies"]["tiny"]
    assert study["optimizer"] == {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "betas": [0.9, 0.999],
                                  "max_grad_norm": None}
    assert study["schedule"]["decay"] == "none"
    assert study["divergence"]["max_loss"] == 100.0
    assert cfg["device"] == "cpu" and cfg["threads_per_run"] == 1


def bad(config_change) -> str:
    cfg = copy.deepcopy(TINY_CONFIG)
    config_change(cfg)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    return str(info.value)


def test_unknown_top_level_key_is_named():
    msg = bad(lambda c: c.update(devcie="cpu"))
    assert "'devcie' was unexpected" in msg


def test_unknown_nested_key_is_named_with_its_path():
    msg = bad(lambda c: c["studies"]["tiny"]["optimizer"].update(momentun=0.9))
    assert "studies.tiny.optimizer" in msg and "'momentun' was unexpected" in msg


def test_wrong_type_names_the_key():
    msg = bad(lambda c: c["studies"]["tiny"].update(batch_sizes=[16, "big"]))
    assert "studies.tiny.batch_sizes[1]" in msg and "'big' is not of type 'integer'" in msg


def test_budget_needs_exactly_one_of_epochs_or_steps():
    msg = bad(lambda c: c["studies"]["tiny"].update(budget={"epochs": 2, "steps": 10}))
    assert "studies.tiny.budget" in msg


def test_missing_required_key_is_named():
    msg = bad(lambda c: c["studies"]["tiny"].pop("base_lrs"))
    assert "'base_lrs' is a required property" in msg


def test_batch_larger_than_the_data_is_refused():
    msg = bad(lambda c: c["studies"]["tiny"].update(batch_sizes=[16, 512]))
    assert "studies.tiny.batch_sizes" in msg and "512 is larger than the 256 training examples" in msg


def test_model_must_fit_the_dataset():
    msg = bad(lambda c: c["studies"]["tiny"].update(models=["resnet8"]))
    assert "studies.tiny.models" in msg and "'resnet8' takes image inputs, but mnist1d holds signal data" in msg


def test_model_options_are_checked_against_the_models_own():
    msg = bad(lambda c: c["studies"]["tiny"].update(model_options={"mlp": {"dropout": 0.5}}))
    assert "studies.tiny.model_options.mlp" in msg and "model 'mlp' has no option 'dropout'; it takes no options" in msg
    msg = bad(lambda c: c["studies"]["tiny"].update(model_options={"cnn": {}}))
    assert "studies.tiny.model_options.cnn" in msg and "not among the study's models" in msg


def test_a_train_mode_analysis_of_a_model_with_dropout_is_refused():
    def change(c):
        c["datasets"] = {"cifar10": {"root": "/nonexistent"}}
        c["studies"]["tiny"].update(dataset="cifar10", models=["keskar_c1"], batch_sizes=[16], analysis={"bn_mode": "batch"})
    msg = bad(change)
    assert "studies.tiny.analysis.bn_mode" in msg and "'keskar_c1' has dropout" in msg
    ok = copy.deepcopy(TINY_CONFIG)
    change(ok)
    ok["studies"]["tiny"]["model_options"] = {"keskar_c1": {"dropout": 0.0}}
    check_config(ok)


def test_model_options_and_data_options_are_part_of_each_runs_spec():
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"]["models"] = ["resnet8"]
    cfg["studies"]["tiny"]["dataset"] = "cifar10"
    cfg["studies"]["tiny"]["batch_sizes"] = [16]
    cfg["studies"]["tiny"]["model_options"] = {"resnet8": {"residual_init": "zero"}}
    cfg["datasets"] = {"cifar10": {"root": "/nonexistent", "augment": "none", "normalize": "scale"}}
    runs = build_grid(check_config(cfg)).values()
    assert {r.model_options["residual_init"] for r in runs} == {"zero"}
    assert all((r.data["augment"], r.data["normalize"]) == ("none", "scale") for r in runs)
    assert all("root" not in r.data and "download" not in r.data for r in runs)  # where the files lie is not the run


def test_train_fractions_are_a_grid_axis_with_their_own_stacks(tiny_config):
    from batchlab.config import build_stacks

    tiny_config["studies"]["tiny"].update(train_fractions=[1.0, 0.5], lr_rules=["linear"], batch_sizes=[16])
    cfg = check_config(tiny_config)
    grid = build_grid(cfg)
    assert sorted(grid) == ["tiny/mlp/bs16/frac0.5/linear/lr0.05/seed0", "tiny/mlp/bs16/linear/lr0.05/seed0"]
    assert grid["tiny/mlp/bs16/frac0.5/linear/lr0.05/seed0"].train_fraction == 0.5
    assert sorted(build_stacks(cfg, grid)) == ["tiny/mlp/bs16/frac0.5/stack0", "tiny/mlp/bs16/stack0"]


def test_a_batch_larger_than_the_smallest_fraction_is_refused():
    msg = bad(lambda c: c["studies"]["tiny"].update(batch_sizes=[16, 128], train_fractions=[1.0, 0.25]))
    assert "128 is larger than the 64 training examples of the smallest training fraction" in msg


def test_bn_batch_sizes_need_a_batchnorm_model():
    msg = bad(lambda c: c["studies"]["tiny"].update(bn_batch_sizes=[8]))
    assert "studies.tiny.bn_batch_sizes" in msg and "model 'mlp' has no BatchNorm, so bn_batch_size=8 means nothing" in msg


def test_nesterov_needs_momentum():
    msg = bad(lambda c: c["studies"]["tiny"]["optimizer"].update(momentum=0.0, nesterov=True))
    assert "studies.tiny.optimizer.nesterov" in msg


def test_cifar_study_needs_its_root():
    def change(c):
        c["studies"]["tiny"].update(dataset="cifar10", models=["resnet8"])

    assert "needs a 'datasets.cifar10' entry" in bad(change)


def test_grid_is_the_full_product_with_readable_ids(tiny_config):
    tiny_config["studies"]["tiny"].update(seeds=[0, 1], base_lrs=[0.05, 0.1])
    grid = build_grid(check_config(tiny_config))
    assert len(grid) == 1 * 2 * 2 * 2 * 2
    run = grid["tiny/mlp/bs64/linear/lr0.1/seed1"]
    assert (run.batch_size, run.lr_rule, run.base_lr, run.seed) == (64, "linear", 0.1, 1)
    assert run.lr == pytest.approx(0.1)
    assert grid["tiny/mlp/bs16/linear/lr0.1/seed1"].lr == pytest.approx(0.025)
    assert all(re.fullmatch(r"[\w./-]+", rid) for rid in grid)


def test_ghost_bn_sizes_enter_the_run_id_and_skip_impossible_cells():
    cfg = {
        "datasets": {"cifar10": {"root": "/nowhere"}},
        "studies": {"bn": {"dataset": "cifar10", "models": ["resnet32"], "batch_sizes": [4, 64], "bn_batch_sizes": [8, None],
                            "base_lrs": [0.1], "budget": {"steps": 10}}},
    }
    grid = build_grid(check_config(cfg))
    assert sorted(grid) == ["bn/resnet32/bs4/linear/lr0.1/seed0", "bn/resnet32/bs64/bn8/linear/lr0.1/seed0",
                            "bn/resnet32/bs64/linear/lr0.1/seed0"]


def test_spec_round_trips_through_a_dict(tiny_config):
    run = next(iter(build_grid(check_config(tiny_config)).values()))
    assert RunSpec.from_dict(run.to_dict()) == run


def schema_keys(node, prefix="") -> set[str]:
    """Every dotted key the schema declares under a node (following local $refs)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = set()

    def walk(n, p):
        if "$ref" in n:
            n = schema["$defs"][n["$ref"].split("/")[-1]]
        for k, sub in n.get("properties", {}).items():
            keys.add(p + k)
            walk(sub, p + k + ".")

    walk(node if node is not None else schema, prefix)
    return keys


def test_every_top_level_and_dataset_key_is_read_by_the_workflow():
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")])
    text += "\n".join(p.read_text() for p in (REPO / "batchlab").rglob("*.py"))
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for key in ("device", "threads_per_run", "gpus_per_run", "datasets", "studies"):
        assert f'config["{key}"]' in text, key
    for key in schema_keys(schema["properties"]["datasets"]["properties"]["mnist1d"]):
        assert key in {"n_train", "n_test", "seed"}  # passed as keyword arguments to prepare_mnist1d
    assert set(schema_keys(schema["$defs"]["torchvision_root"])) == {"root", "download", "verify_checksums", "augment", "normalize"}
    assert 'options["root"]' in text and 'options.get("download"' in text


def test_schema_file_is_the_one_the_snakefile_uses():
    assert Path("workflow/schemas/config.schema.yaml").as_posix() in SCHEMA_PATH.as_posix()
    assert '"workflow" / "schemas" / "config.schema.yaml"' in (REPO / "Snakefile").read_text()


def test_analysed_runs_follow_the_filters(tiny_config):
    from batchlab.config import analysed_runs

    tiny_config["studies"]["tiny"].update(seeds=[0, 1], analysis={"runs": {"seeds": [0]}, "along_training": {"batch_sizes": [16]}})
    cfg = check_config(tiny_config)
    selected = analysed_runs(cfg, build_grid(cfg))
    assert sorted(selected) == [
        "tiny/mlp/bs16/constant/lr0.05/seed0", "tiny/mlp/bs16/linear/lr0.05/seed0",
        "tiny/mlp/bs64/constant/lr0.05/seed0", "tiny/mlp/bs64/linear/lr0.05/seed0",
    ]
    assert [rid for rid, along in selected.items() if along] == ["tiny/mlp/bs16/constant/lr0.05/seed0", "tiny/mlp/bs16/linear/lr0.05/seed0"]
    tiny_config["studies"]["tiny"]["analysis"] = {"enabled": False}
    cfg = check_config(tiny_config)
    assert analysed_runs(cfg, build_grid(cfg)) == {}


def test_filters_must_name_values_of_the_study():
    msg = bad(lambda c: c["studies"]["tiny"].update(analysis={"runs": {"batch_sizes": [32]}}))
    assert "studies.tiny.analysis.runs.batch_sizes" in msg and "[32] not in the study's batch_sizes" in msg


def test_noise_scale_batches_must_be_ordered():
    msg = bad(lambda c: c["studies"]["tiny"].update(analysis={"noise_scale": {"b_small": 64, "b_big": 64}}))
    assert "studies.tiny.analysis.noise_scale" in msg
    msg = bad(lambda c: c["studies"]["tiny"].update(analysis={"noise_scale": {"n_draws": 50, "max_draws": 20}}))
    assert "studies.tiny.analysis.noise_scale" in msg and "max_draws (20) must be at least n_draws (50)" in msg


def test_default_pairs_join_the_smallest_and_largest_healthy_batch(tiny_config):
    from batchlab.config import build_pairs, pair_ends

    tiny_config["studies"]["tiny"].update(batch_sizes=[16, 32, 64], seeds=[0, 1], interpolation={"select": {"seeds": [1]}})
    cfg = check_config(tiny_config)
    pairs = build_pairs(cfg, build_grid(cfg))
    assert sorted(pairs) == ["tiny/mlp/constant/lr0.05/seed1", "tiny/mlp/linear/lr0.05/seed1"]
    pair = pairs["tiny/mlp/linear/lr0.05/seed1"]
    runs = [f"tiny/mlp/bs{b}/linear/lr0.05/seed1" for b in (16, 32, 64)]
    assert pair.candidates == tuple(runs)
    healthy = dict.fromkeys(runs, "completed")
    assert pair_ends(pair, healthy) == (runs[0], runs[2])
    # a stalled or diverged end is never chosen: the next healthy batch size takes its place
    assert pair_ends(pair, {**healthy, runs[2]: "stalled"}) == (runs[0], runs[1])
    assert pair_ends(pair, {**healthy, runs[0]: "diverged"}) == (runs[1], runs[2])
    assert pair_ends(pair, {**healthy, runs[0]: "diverged", runs[2]: "stalled"}) is None


def test_explicit_pairs_are_checked(tiny_config):
    from batchlab.config import build_pairs

    tiny_config["studies"]["tiny"]["interpolation"] = {
        "pairs": [{"small": "tiny/mlp/bs16/constant/lr0.05/seed0", "large": "tiny/mlp/bs64/linear/lr0.05/seed0"}]
    }
    cfg = check_config(tiny_config)
    pairs = build_pairs(cfg, build_grid(cfg))
    assert list(pairs) == ["tiny/mlp/bs16/constant/lr0.05/seed0/vs_mlp_bs64_linear_lr0.05_seed0"]
    assert next(iter(pairs.values())).candidates == ("tiny/mlp/bs16/constant/lr0.05/seed0", "tiny/mlp/bs64/linear/lr0.05/seed0")
    tiny_config["studies"]["tiny"]["interpolation"]["pairs"][0]["large"] = "tiny/mlp/bs999/linear/lr0.05/seed0"
    cfg = check_config(tiny_config)
    with pytest.raises(ConfigError, match=r"interpolation.pairs\[0\].large': 'tiny/mlp/bs999/linear/lr0.05/seed0' is not a run"):
        build_pairs(cfg, build_grid(cfg))


def test_a_warm_up_longer_than_the_shortest_run_is_refused():
    # tiny: 256 examples, batch 64, 2 epochs: the shortest run has 8 steps
    msg = bad(lambda c: c["studies"]["tiny"].update(schedule={"warmup_steps": 8}))
    assert "studies.tiny.schedule.warmup_steps" in msg and "only 8 steps" in msg


def test_a_two_batch_b_big_beyond_the_training_set_is_refused():
    def change(c):
        c["studies"]["tiny"]["analysis"]["noise_scale"].update(method="two_batch", b_big=512)

    assert "512 is larger than the 256 training examples" in bad(change)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"]["analysis"]["noise_scale"].update(b_big=512)  # auto: exact here, b_big unused
    check_config(cfg)


# A missing root is refused before any job where nothing may download it: torchvision's data set told not to, and
# a text corpus, which cannot be downloaded (else prepare_data would be the first to say so).
@pytest.mark.parametrize("dataset, model, reason", [
    ("cifar10", "resnet8", "and download is false; point it at the release or set download: true"),
    ("wikitext2", "lstm_lm", "and this data set cannot be downloaded; point it at the release or put the release there"),
])
def test_a_missing_root_that_nothing_may_download_is_refused(dataset, model, reason, tmp_path, monkeypatch):
    from batchlab.config import check_data_roots

    monkeypatch.chdir(tmp_path)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["datasets"][dataset] = {"root": "data/release"}
    cfg["studies"]["tiny"].update(dataset=dataset, models=[model], batch_sizes=[16, 64])
    check_config(cfg)
    with pytest.raises(ConfigError, match=re.escape(f"datasets.{dataset}.root': data/release does not exist (from "
                                                    f"{tmp_path}) {reason}")):
        check_data_roots(cfg)
    (tmp_path / "data/release").mkdir(parents=True)
    check_data_roots(cfg)  # there now
    if dataset == "cifar10":
        cfg["datasets"]["cifar10"] = {"root": "elsewhere", "download": True}
        check_data_roots(cfg)  # torchvision will fetch it


# --- config files that are not a YAML mapping: one line naming the file, before any job ------

NOT_A_CONFIG = {  # what the file holds -> what the message says of it
    "binary": (bytes(range(256)), "is not a text file: byte 0x80 at offset 128 is not UTF-8"),
    "empty": (b"", "is empty"),
    "bad_yaml": (b"key: [unclosed\n", "is not valid YAML: expected ',' or ']'"),
    "list": (b"- device: cpu\n- studies: {}\n", "holds a list, not a mapping of config keys"),
    "scalar": (b"cpu\n", "holds the single value 'cpu', not a mapping of config keys"),
}


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    from batchlab.__main__ import main

    code = main(list(args))
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("kind", NOT_A_CONFIG)
def test_check_config_refuses_a_file_that_is_not_a_yaml_mapping_in_one_line_naming_it(kind, tmp_path, capsys):
    content, reason = NOT_A_CONFIG[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(content)
    code, err = cli(capsys, "check-config", str(path))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: config file {path} {reason}")


@pytest.mark.parametrize("command", ["estimate", "smoke-data"])
def test_every_command_reads_config_files_through_the_same_check(command, tmp_path, capsys):
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    code, err = cli(capsys, command, str(tmp_path / "ok.yaml"), str(tmp_path / "empty.yaml"))
    assert code == 2 and err == [f"error: config file {tmp_path / 'empty.yaml'} is empty: a config is a mapping of keys such as studies"]


@pytest.mark.slow
def test_check_config_runs_as_a_command_and_names_the_file_of_an_invalid_config(tmp_path):
    import subprocess
    import sys

    def check(*paths: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "batchlab", "check-config", *map(str, paths)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    result = check(tmp_path / "binary.yaml")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: config file {tmp_path / 'binary.yaml'} is not a text file: byte 0x80 at offset 128 is not UTF-8"]
    bad = copy.deepcopy(TINY_CONFIG)
    bad["devcie"] = "cpu"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(bad))
    result = check(REPO / "config.yaml", tmp_path / "typo.yaml")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f"{REPO / 'config.yaml'} + {tmp_path / 'typo.yaml'}: invalid config at '<top level>'" in result.stderr
    assert "'devcie' was unexpected" in result.stderr
    result = check(REPO / "config.yaml")
    assert result.returncode == 0 and "valid" in result.stdout


def test_load_config_file_returns_the_mapping(tmp_path):
    from batchlab.config import load_config_file

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    assert load_config_file(tmp_path / "c.yaml") == TINY_CONFIG
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'missing.yaml'} does not exist"):
        load_config_file(tmp_path / "missing.yaml")



@pytest.mark.parametrize("value", [".nan", ".inf"])  # -.inf: the schema says below its minimum
def test_a_nan_or_infinite_number_is_refused_naming_its_key(value, tmp_path):
    from batchlab.config import load_configs

    text = yaml.safe_dump(TINY_CONFIG).replace("base_lrs:\n", "base_lrs:\n    - " + value + "\n", 1)
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"invalid config at 'studies\.tiny\.base_lrs\[0\]': -?(nan|inf) is not a "
                                          r"finite number"):
        load_configs([tmp_path / "c.yaml"])


def test_a_key_written_twice_in_one_mapping_is_refused_naming_the_line(tmp_path):
    from batchlab.config import load_config_file

    study = yaml.safe_dump({"tiny": TINY_CONFIG["studies"]["tiny"]})
    (tmp_path / "twice.yaml").write_text("studies:\n" + "".join("  " + line + "\n" for line in
                                                                 (study + study).splitlines()))
    second = 2 + len(study.splitlines())
    with pytest.raises(ConfigError, match=f"key 'tiny' appears twice in one mapping at line {second}, column 3"):
        load_config_file(tmp_path / "twice.yaml")
    # a merge key's values may be overridden: that is what it is for
    (tmp_path / "merge.yaml").write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")
    assert load_config_file(tmp_path / "merge.yaml") == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}


def test_a_grid_larger_than_max_runs_is_refused_until_confirmed():
    from batchlab.config import grid_size

    config = copy.deepcopy(TINY_CONFIG)  # 4 runs: 2 batch sizes x 2 LR rules
    config["studies"]["tiny"]["seeds"] = [0, 1, 2]
    config["max_runs"] = 11
    with pytest.raises(ConfigError, match="invalid config at 'max_runs': the grid has 12 runs, more than max_runs "
                                          r"\(11\); if you mean it, set max_runs: 12"):
        check_config(copy.deepcopy(config))
    config["max_runs"] = 12
    assert grid_size(check_config(config)) == len(build_grid(config)) == 12


@pytest.mark.parametrize("preset", ["config.yaml", "config/masters_luschi.yaml", "config/keskar.yaml",
                                    "config/golmant.yaml", "config/fashion_mnist.yaml"])
def test_the_grid_size_counted_is_the_grid_built(preset):
    from batchlab.config import grid_size, load_configs

    config = load_configs([REPO / preset])  # masters_luschi's ghost BN study drops BN sub-batches above the batch
    assert grid_size(config) == len(build_grid(config)) <= config["max_runs"]

# Where the Snakefile has control first: the default config.yaml (snakemake reads a --configfile
# itself, before the Snakefile, and refuses a broken one without naming it), and the checks of a
# config that is a mapping.

def snakemake(workdir: Path, *args: str):
    import subprocess
    import sys

    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "-n", "--cores", "1", *args], capture_output=True, text=True, timeout=300, cwd=workdir)


@pytest.mark.workflow
@pytest.mark.parametrize("kind", ["binary", "list"])
def test_the_snakefile_refuses_a_default_config_that_is_not_a_yaml_mapping_naming_it(kind, tmp_path):
    content, reason = NOT_A_CONFIG[kind]
    (tmp_path / "config.yaml").write_bytes(content)
    result = snakemake(tmp_path)
    assert result.returncode != 0 and f"config file config.yaml {reason}" in (result.stdout + result.stderr).splitlines()
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_the_snakefile_names_the_config_files_of_an_invalid_config(tmp_path):
    bad = copy.deepcopy(TINY_CONFIG)
    bad["studies"]["tiny"]["batch_sizes"] = [16, "big"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "--configfile", "bad.yaml", "--config", "device=cpu")
    assert result.returncode != 0
    assert (f"{tmp_path / 'bad.yaml'} + --config: invalid config at 'studies.tiny.batch_sizes[1]': 'big' is not of type "
            f"'integer'") in (result.stdout + result.stderr).splitlines()
    # snakemake's own reading keeps the last of two same keys; the Snakefile reads the files again and refuses it
    (tmp_path / "twice.yaml").write_text(yaml.safe_dump(TINY_CONFIG) + "device: cpu\n")
    result = snakemake(tmp_path, "--configfile", "twice.yaml")
    assert result.returncode != 0 and "key 'device' appears twice in one mapping" in result.stdout + result.stderr
    # a grid over max_runs (a typo in the seeds) is refused before snakemake plans anything
    huge = copy.deepcopy(TINY_CONFIG)
    huge["studies"]["tiny"]["seeds"] = list(range(5001))
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump(huge))
    result = snakemake(tmp_path, "--configfile", "huge.yaml")
    assert result.returncode != 0 and "the grid has 20,004 runs, more than max_runs (20,000)" in result.stdout + result.stderr
