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
    study = cfg["studies"]["demo"]
    assert len(study["models"]) >= 2 and len(study["batch_sizes"]) >= 4 and len(study["lr_rules"]) >= 3


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
    assert set(schema_keys(schema["$defs"]["torchvision_root"])) == {"root", "download", "verify_checksums"}
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


def test_a_missing_root_that_may_not_download_is_refused(tmp_path, monkeypatch):
    from batchlab.config import check_data_roots

    monkeypatch.chdir(tmp_path)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["datasets"]["cifar10"] = {"root": "data/cifar"}
    cfg["studies"]["tiny"].update(dataset="cifar10", models=["resnet8"], batch_sizes=[16, 64])
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"datasets.cifar10.root': data/cifar does not exist .* download is false"):
        check_data_roots(cfg)
    (tmp_path / "data/cifar").mkdir(parents=True)
    check_data_roots(cfg)  # there now
    cfg["datasets"]["cifar10"] = {"root": "elsewhere", "download": True}
    check_data_roots(cfg)  # torchvision will fetch it
