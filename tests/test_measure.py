"""The sharpness rows of one checkpoint: every metric says its method and carries its interval."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from batchlab.analysis.b_noise import model_b_noise
from batchlab.analysis.measure import analysis_subset, measure_state
from batchlab.analysis.noise_scale import exact_noise_scale
from batchlab.config import check_config
from batchlab.models import build_model
from batchlab.tables import SHARPNESS_COLUMNS
from tests.conftest import TINY_CONFIG, make_spec

# columns analyse_run adds around each measure_state row
RUN_LEVEL_COLUMNS = {"run_id", "step", "train_loss", "bn_mode", "n_examples"}


@pytest.fixture
def analysis_cfg() -> dict:
    cfg = check_config(copy.deepcopy(TINY_CONFIG))["studies"]["tiny"]["analysis"]
    cfg["sharpness"]["max_iter"] = 3  # the sharpness values themselves are tested elsewhere
    cfg["sharpness"]["converged"] = True  # the tiny workflows leave the converged search out, for time
    return cfg


def measure(data, cfg: dict, state: dict | None = None) -> pd.DataFrame:
    spec = make_spec()
    torch.manual_seed(0)
    model = build_model(spec.model, data.input_shape, data.num_classes)
    x, y = analysis_subset(data, 64, cfg["seed"])
    rows = measure_state(spec, state or model.state_dict(), data, x, y, cfg)
    assert set(rows[0]) | RUN_LEVEL_COLUMNS == set(SHARPNESS_COLUMNS)
    return pd.DataFrame(rows).set_index("metric", drop=False)


@pytest.mark.slow
def test_rows_carry_method_and_interval(tiny_data, analysis_cfg, monkeypatch):
    # a shorter converged search: its rows and their order are what is checked here, its search in test_sharpness
    from batchlab.analysis import measure as measure_module

    short = functools.partial(measure_module.eps_sharpness_converged, n_starts=4, screen_iter=10, max_iter=30)
    monkeypatch.setattr(measure_module, "eps_sharpness_converged", short)
    df = measure(tiny_data, analysis_cfg)
    methods = {metric: list(part.unique()) for metric, part in df["method"].groupby(df["metric"].to_numpy())}
    assert methods == {"eps_sharpness_full": ["lbfgsb", "lbfgsb_multistart"],
                       "eps_sharpness_subspace": ["lbfgsb", "lbfgsb_multistart"], "hessian_lambda_max": ["lanczos"],
                       "hessian_trace": ["hutchinson"], "noise_scale": ["exact"], "b_noise": ["exact"]}
    assert len(df.loc["eps_sharpness_full"]) == 2 * len(analysis_cfg["sharpness"]["epsilons"])
    no_interval = df[df["metric"].str.startswith("eps_") | df["metric"].isin(["hessian_lambda_max", "b_noise"])]
    assert no_interval[["ci_low", "ci_high"]].isna().all().all()
    for eps, part in df.loc["eps_sharpness_full"].groupby("epsilon"):  # the converged search finds at least as much
        by = part.set_index("method")["value"]
        assert by["lbfgsb_multistart"] >= by["lbfgsb"] * (1 - 1e-9)
    assert df["error_target_met"].isna().all()  # no adaptive estimate here

    trace = df.loc["hessian_trace"]
    n_probes = analysis_cfg["hessian"]["n_probes"]
    half = stats.t.ppf(0.975, n_probes - 1) * trace["stderr"]
    assert trace["ci_low"] == pytest.approx(trace["value"] - half)
    assert trace["ci_high"] == pytest.approx(trace["value"] + half)
    assert trace["ci_low"] < trace["value"] < trace["ci_high"]

    # the noise scale: exact, on the whole training set, not the 64-example analysis subset
    noise = df.loc["noise_scale"]
    torch.manual_seed(0)
    model = build_model(make_spec().model, tiny_data.input_shape, tiny_data.num_classes)
    exact = exact_noise_scale(model, tiny_data.x_train, tiny_data.y_train)
    assert noise["value"] == pytest.approx(exact.b_simple, rel=1e-9)
    # an interval over the examples for the data distribution's B_simple, never of width zero: the plug-in value
    # (biased low at n = 256, |G|^2 carrying tr(Sigma) / n) may sit at its lower end
    assert noise["ci_low"] <= noise["value"] < noise["ci_high"] and noise["ci_high"] > noise["ci_low"]
    assert noise["n_evals"] == tiny_data.n_train  # one per-example gradient per training example
    torch.manual_seed(0)
    model = build_model(make_spec().model, tiny_data.input_shape, tiny_data.num_classes)
    b_noise = model_b_noise(model, tiny_data.x_train, tiny_data.y_train, analysis_cfg["b_noise"])
    assert df.loc["b_noise", "value"] == pytest.approx(b_noise.b_noise, rel=1e-9)


def test_a_study_measures_only_what_it_lists(tiny_data, analysis_cfg):
    analysis_cfg["measures"] = ["noise_scale", "b_noise"]
    analysis_cfg["b_noise"].update(method="probes", n_probes=4, max_probes=8)
    df = measure(tiny_data, analysis_cfg)
    assert list(df["metric"]) == ["noise_scale", "b_noise"] and df.loc["b_noise", "method"] == "probes"
    b_noise = df.loc["b_noise"]
    assert b_noise["ci_low"] < b_noise["value"] < b_noise["ci_high"] and b_noise["error_target_met"] in (True, False)


def test_two_batch_noise_scale_row(tiny_data, analysis_cfg):
    analysis_cfg["noise_scale"].update(method="two_batch", n_draws=3, max_draws=12, n_bootstrap=100)
    analysis_cfg["sharpness"].update(full_space=False, subspace_dim=None)  # only the noise scale matters here
    noise = measure(tiny_data, analysis_cfg).loc["noise_scale"]
    assert noise["method"] == "two_batch"
    assert noise["ci_low"] <= noise["value"] <= noise["ci_high"]
    assert noise["n_evals"] % 2 == 0 and 2 * 3 <= noise["n_evals"] <= 2 * 12  # two batches per draw


def test_non_finite_weights_still_name_their_methods(tiny_data, analysis_cfg):
    torch.manual_seed(0)
    state = build_model(make_spec().model, tiny_data.input_shape, tiny_data.num_classes).state_dict()
    first = next(iter(state))
    state[first] = torch.full_like(state[first], math.nan)
    df = measure(tiny_data, analysis_cfg, state)
    assert df["value"].isna().all() and df[["ci_low", "ci_high"]].isna().all().all()
    assert df.loc["noise_scale", "method"] == "exact" and df.loc["hessian_trace", "method"] == "hutchinson"
    assert np.all(df["method"].notna())


@pytest.mark.slow
def test_analyse_runs_is_analyse_run_for_each_run_in_one_table(tiny_data, analysis_cfg, tmp_path):
    from batchlab.analysis.measure import analyse_run, analyse_runs
    from batchlab.config import build_grid
    from batchlab.train.loop import train_stack

    analysis_cfg["sharpness"].update(full_space=False)
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["studies"]["tiny"].update(batch_sizes=[16], budget={"epochs": 1})
    specs = list(build_grid(check_config(cfg)).values())  # the constant and the linear rule: one stack
    dirs = [tmp_path / str(i) for i in range(len(specs))]
    train_stack(specs, tiny_data, dirs, device="cpu", progress=False)
    table = analyse_runs([(dirs[0], specs[0], True), (dirs[1], specs[1], False)], tiny_data, analysis_cfg)
    alone = [analyse_run(dirs[0], specs[0], tiny_data, analysis_cfg, True),
             analyse_run(dirs[1], specs[1], tiny_data, analysis_cfg, False)]
    pd.testing.assert_frame_equal(table, pd.concat(alone, ignore_index=True))
    steps = table.groupby("run_id")["step"].nunique()
    assert steps[specs[0].run_id] > 1 and steps[specs[1].run_id] == 1  # along training, and the final weights only
    assert list(analyse_runs([], tiny_data, analysis_cfg).columns) == list(SHARPNESS_COLUMNS)
