"""Figures: the data each one selects (pure helpers, tested without drawing), what is drawn
(artists found by gid, text inside the axes), that every figure draws from empty tables, and
that every figure of a realistic study is laid out wider than tall."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from batchlab.quality import best_base_lr_runs
from batchlab.plots import FIGURES, build_figure, draw_figure, final_sharpness
from batchlab.plots.common import MAX_WIDTH, figure_style
from batchlab.speedup import FIT_STATUS_TEXT

# --- the small fakes that tests/test_report.py also uses -------------------------------------------


def synthetic_tables():
    rows, curves = [], []
    for model in ("mlp", "cnn"):
        for rule in ("constant", "linear"):
            for b in (16, 64, 256):
                for lr in (0.1, 1.0):
                    for seed in (0, 1):
                        run_id = f"s/{model}/bs{b}/{rule}/lr{lr}/seed{seed}"
                        diverged = lr == 1.0 and b == 256
                        acc = 0.9 - 0.1 * np.log2(b / 16) / 4 + (0.05 if lr == 1.0 else 0.0)
                        rows.append(dict(run_id=run_id, study="s", model=model, lr_rule=rule, batch_size=b, base_lr=lr, seed=seed,
                                         status="diverged" if diverged else "completed",
                                         final_test_acc=np.nan if diverged else acc + 0.01 * seed))
                        steps = np.arange(0, 101, 10)
                        curves.append(pd.DataFrame(dict(run_id=run_id, step=steps, epoch=steps / 10, train_loss=2.3 * np.exp(-steps / 50) + 0.01)))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def synthetic_sharpness(runs):
    rows = []
    for run in runs.itertuples():
        steps = [0, 10, 100] if run.seed == 0 else [100]
        for step in steps:
            train_loss = 2.3 * np.exp(-step / 30) + 0.01
            sharp = (1 + np.log2(run.batch_size)) * (1 + step / 100) if run.batch_size > 16 else 10 / (1 + step / 10)
            for metric, eps, value in (("eps_sharpness_full", 1e-3, sharp), ("eps_sharpness_full", 5e-4, sharp / 2),
                                       ("hessian_lambda_max", np.nan, 3 * sharp)):
                rows.append(dict(run_id=run.run_id, step=step, train_loss=train_loss, metric=metric, epsilon=eps, value=value,
                                 subset_loss=train_loss * 1.1 if metric.startswith("eps") else np.nan,
                                 ci_low=np.nan, ci_high=np.nan))
    return runs.assign(steps=100, final_test_acc=runs["final_test_acc"]), pd.DataFrame(rows)


# --- a realistic study: the demo's grid, with stalled and diverged runs and every table ---------------

MODELS, RULES, BATCHES, BASE_LRS, SEEDS = ("mlp", "cnn"), ("constant", "linear", "sqrt"), (16, 32, 64, 128, 256, 512), (0.03, 0.1), (0, 1)
TARGETS = (("train_loss", 1.0), ("train_loss", 0.5), ("test_loss", 1.2), ("test_error", 0.45), ("test_error", 0.35))
ALONG_TRAINING = (16, 256, 512)  # seed 0, base LR 0.1
ANALYSED = (16, 64, 256, 512)  # final checkpoint, base LR 0.1
REF = 64


def scaled_lr(rule, base_lr, b):
    return base_lr * {"constant": 1.0, "linear": b / REF, "sqrt": np.sqrt(b / REF)}[rule]


def run_status(model, rule, b, base_lr, seed):
    if rule == "linear" and b == 512 and base_lr == 0.1:
        return "diverged"  # LR 0.8: both seeds blow up, so base LR 0.03 is chosen there
    if rule == "constant" and b == 256 and seed == 1:
        return "diverged"  # at either LR: the chosen cell keeps one diverged seed
    if rule == "sqrt" and b == 512 and seed == 1:
        return "stalled"  # at either LR: the chosen cell keeps one stalled seed
    return "completed"


def run_accuracy(model, rule, b, base_lr, seed, status):
    if status == "diverged":
        return np.nan
    if status == "stalled":
        return 0.1
    acc = {"mlp": 0.68, "cnn": 0.93}[model] - 0.05 * np.log2(b / 16) / 5 + 0.005 * seed
    if rule == "constant" and b == 16:
        return acc - (0.32 if base_lr == 0.1 else 0.0)  # the unanalysed LR 0.03 wins here (0.93 against 0.61)
    return acc + (0.01 if base_lr == 0.1 else 0.0)


def fake_runs():
    rows = []
    for model in MODELS:
        for rule in RULES:
            for b in BATCHES:
                for base_lr in BASE_LRS:
                    for seed in SEEDS:
                        status = run_status(model, rule, b, base_lr, seed)
                        acc = run_accuracy(model, rule, b, base_lr, seed, status)
                        steps = 15 * int(np.ceil(4000 / b))
                        rows.append(dict(
                            run_id=f"demo/{model}/bs{b}/{rule}/lr{base_lr:g}/seed{seed}", study="demo", dataset="mnist1d",
                            task="classification", train_fraction=1.0, model=model, batch_size=b, bn_batch_size=None, lr_rule=rule, base_lr=base_lr, ref_batch_size=REF,
                            lr=scaled_lr(rule, base_lr, b), optimizer="sgd", seed=seed, epochs=15,
                            steps=steps if status != "diverged" else steps // 3, planned_steps=steps, status=status,
                            diverged_step=steps // 3 if status == "diverged" else np.nan,
                            stop_reason={"completed": "budget", "stalled": "plateau", "diverged": "diverged"}[status],
                            final_train_loss={"diverged": np.nan, "stalled": 2.3}.get(status, 0.2 + 0.1 * np.log2(b / 16)),
                            final_train_acc=acc, final_test_loss=np.nan if status == "diverged" else 0.5 + 0.05 * np.log2(b / 16),
                            final_test_acc=acc, best_test_acc=acc, final_train_perplexity=np.nan,
                            final_test_perplexity=np.nan, final_train_miou=np.nan, final_test_miou=np.nan,
                            wall_time_s=10.0, device="cpu"))
    return pd.DataFrame(rows)


def fake_curves(runs):
    parts = []
    for run in runs.itertuples():
        steps = np.unique(np.geomspace(1, run.steps, 20).astype(int))
        epoch = steps / run.steps * (15 if run.status != "diverged" else 5)
        if run.status == "stalled":
            loss = np.full(len(steps), 2.3)
        elif run.status == "diverged":
            loss = 2.3 * np.exp(epoch / 2)
        else:
            loss = 2.2 * np.exp(-epoch / 4) + run.final_train_loss
        parts.append(pd.DataFrame(dict(run_id=run.run_id, step=steps, epoch=epoch, examples_seen=steps * run.batch_size,
                                       lr=run.lr, batch_loss=loss, train_loss=loss, train_acc=0.5, test_loss=loss * 1.2,
                                       test_acc=0.5, train_miou=np.nan, test_miou=np.nan)))
    return pd.concat(parts, ignore_index=True)


def _sharpness_row(run_id, step, loss, metric, value, **extra):
    row = dict(run_id=run_id, step=step, train_loss=loss, metric=metric, epsilon=np.nan, value=value, stderr=np.nan,
               subset_loss=np.nan, n_evals=10, bn_mode="none", n_examples=512, ci_low=np.nan, ci_high=np.nan,
               method={"eps_sharpness_full": "lbfgsb", "hessian_lambda_max": "lanczos", "hessian_trace": "hutchinson",
                       "noise_scale": "two_batch", "b_noise": "two_batch"}[metric])
    return {**row, **extra}


def fake_sharpness(runs):
    rows = []
    for run in runs[runs["status"] != "diverged"].itertuples():
        along = run.seed == 0 and run.base_lr == 0.1 and run.batch_size in ALONG_TRAINING
        if not (along or (run.base_lr == 0.1 and run.batch_size in ANALYSED)):
            continue
        for step in (np.unique(np.geomspace(1, run.steps, 8).astype(int)) if along else [run.steps]):
            progress = step / run.steps
            loss = 2.3 * (1 - progress) + run.final_train_loss * progress
            grow = np.log2(run.batch_size) / 4
            sharp = 5 * grow ** (2 * progress) if run.batch_size > 64 else 5 / (1 + 3 * progress)
            trace = 40 * sharp
            rows += [
                _sharpness_row(run.run_id, step, loss, "eps_sharpness_full", sharp, epsilon=1e-3, subset_loss=loss * 0.8),
                _sharpness_row(run.run_id, step, loss, "eps_sharpness_full", sharp / 2, epsilon=5e-4, subset_loss=loss * 0.8),
                _sharpness_row(run.run_id, step, loss, "hessian_lambda_max", 3 * sharp),
                _sharpness_row(run.run_id, step, loss, "hessian_trace", trace, ci_low=trace * 0.87, ci_high=trace * 1.13),
            ]
            if along:
                b_simple = 20 * (1 + 30 * progress) * (1.5 if run.model == "cnn" else 1.0)
                rows.append(_sharpness_row(run.run_id, step, loss, "noise_scale", b_simple, ci_low=b_simple * 0.6 - 10,
                                           ci_high=b_simple * 1.5))
                b_noise = 2.5 * b_simple
                rows.append(_sharpness_row(run.run_id, step, loss, "b_noise", b_noise, ci_low=b_noise * 0.5,
                                           ci_high=b_noise * 2))
    rows.append(_sharpness_row("demo/cnn/bs16/linear/lr0.1/seed0", 2, 2.2, "noise_scale", np.inf))  # never plotted
    return pd.DataFrame(rows)


def fake_interpolation(runs):
    parts = []
    alphas = np.linspace(-1, 2, 13)
    for model in MODELS:
        for rule in RULES:
            ends = runs[(runs["model"] == model) & (runs["lr_rule"] == rule) & (runs["seed"] == 0) & (runs["base_lr"] == 0.1)
                        & (runs["status"] == "completed")].sort_values("batch_size")
            small, large = ends["run_id"].iloc[0], ends["run_id"].iloc[-1]
            for split in ("train", "test"):
                parts.append(pd.DataFrame(dict(
                    pair_id=f"demo/{model}/{rule}/lr0.1/seed0", run_id_small=small, run_id_large=large, alpha=alphas,
                    split=split, loss=0.2 + (alphas - 0.3) ** 2 * (3 if split == "test" else 2),
                    accuracy=np.clip(0.9 - 0.2 * np.abs(alphas - 0.3), 0, 1), bn_mode="none")))
    return pd.concat(parts, ignore_index=True)


B_CRIT = {"mlp": 120.0, "cnn": 200.0}
# (model, target) -> what the critical-batch fit of the tuned curve says
FITS = {
    # accepted, but beyond the grid's largest batch (512): its label must not be clipped
    ("cnn", TARGETS[0]): dict(fit_status="ok", b_crit=843.0, ci_low=400.0, ci_high=2000.0, b_crit_bound=None),
    ("cnn", TARGETS[1]): dict(fit_status="ok", b_crit=64.0, ci_low=40.0, ci_high=100.0, b_crit_bound=None),
    ("cnn", TARGETS[2]): dict(fit_status="beyond_grid", b_crit=np.nan, ci_low=512.0, ci_high=np.inf, b_crit_bound=">512"),
    ("cnn", TARGETS[3]): dict(fit_status="below_grid", b_crit=np.nan, ci_low=0.0, ci_high=16.0, b_crit_bound="<16"),
    ("cnn", TARGETS[4]): dict(fit_status="interval_too_wide", b_crit=np.nan, ci_low=5.0, ci_high=5000.0, b_crit_bound=None),
    ("mlp", TARGETS[0]): dict(fit_status="ok", b_crit=120.0, ci_low=60.0, ci_high=240.0, b_crit_bound=None),
}
FIXED_TARGET = dict(target_rule="fixed", target_batch_size=pd.NA, target_fallback=False)
NO_FIT = dict(fit_status="too_few_points", b_crit=np.nan, ci_low=np.nan, ci_high=np.nan, b_crit_bound=None)
# model -> the noise scales read at the first target (batchlab.noise_prediction's NOISE_COLUMNS); none at the others
NOISE = {"mlp": dict(b_simple=80.0, b_simple_ci_low=40.0, b_simple_ci_high=160.0, b_simple_n_runs=4,
                     b_noise=250.0, b_noise_ci_low=120.0, b_noise_ci_high=500.0, b_noise_n_runs=4, b_noise_train_loss=1.0),
         "cnn": dict(b_simple=100.0, b_simple_ci_low=50.0, b_simple_ci_high=200.0, b_simple_n_runs=4,
                     b_noise=300.0, b_noise_ci_low=150.0, b_noise_ci_high=600.0, b_noise_n_runs=4, b_noise_train_loss=1.0)}
NO_NOISE = dict(b_simple=np.nan, b_simple_ci_low=np.nan, b_simple_ci_high=np.nan, b_simple_n_runs=0, b_noise=np.nan,
                b_noise_ci_low=np.nan, b_noise_ci_high=np.nan, b_noise_n_runs=0, b_noise_train_loss=np.nan)


def best_lr_choice(b):
    """The tuned LR of the fake: inside the grid at B <= 32, its smallest LR at 64, its largest from 128 on."""
    if b <= 32:
        return scaled_lr("sqrt", 0.1, b)
    return 0.03 if b == 64 else scaled_lr("linear", 0.1, b)


def fake_speedup():
    rows = []
    for model in MODELS:
        for rule in (*RULES, "best"):
            for metric, value in TARGETS:
                never = model == "mlp" and (metric, value) == ("test_error", 0.35)
                for b in BATCHES:
                    reached = not never and not (rule == "linear" and b == 512)
                    steps = 300 * (1 + B_CRIT[model] / b) * (1.2 if rule != "best" else 1.0) / value
                    base = 300 * (1 + B_CRIT[model] / 16) * (1.2 if rule != "best" else 1.0) / value
                    rows.append(dict(study="demo", model=model, train_fraction=1.0, lr_rule=rule, target_metric=metric,
                                     target_value=value, **FIXED_TARGET, batch_size=b, steps_to_target=steps if reached else np.nan,
                                     best_lr=best_lr_choice(b) if rule == "best" else scaled_lr(rule, 0.1, b),
                                     best_base_lr=0.1, reached=reached, n_seeds=2, n_seeds_reached=2 if reached else 0,
                                     speedup=base / steps if reached else np.nan, speedup_ci_low=0.9 * base / steps,
                                     speedup_ci_high=1.1 * base / steps, perfect_speedup=b / 16, regime=None))
    return pd.DataFrame(rows)


def fake_critical():
    rows = []
    for model in MODELS:
        for rule in (*RULES, "best"):
            for target in TARGETS:
                fit = FITS.get((model, target), NO_FIT) if rule == "best" else NO_FIT
                first = target == TARGETS[0]
                rows.append(dict(study="demo", model=model, train_fraction=1.0, lr_rule=rule, target_metric=target[0],
                                 target_value=target[1], **FIXED_TARGET, s_min=300.0, n_points=6, **fit,
                                 **(NOISE[model] if first else NO_NOISE)))
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def study():
    runs = fake_runs()
    return dict(runs=runs, curves=fake_curves(runs), sharpness=fake_sharpness(runs), interpolation=fake_interpolation(runs),
                speedup=fake_speedup(), critical=fake_critical())


def tables_for(name, tables):
    """The tables figures.smk gives figure `name`."""
    import inspect

    return {t: tables[t] for t in inspect.signature(FIGURES[name]).parameters}


def build(name, tables):
    fig = build_figure(name, tables_for(name, tables))
    with figure_style():
        fig.draw_without_rendering()  # lays out the figure, so that text extents are final (no pixels: a third of the time)
    return fig


def axes_titled(fig, title):
    """The panel titled `title`, with or without a note under its title (`note_under_title`)."""
    found = [ax for ax in fig.axes if ax.get_title() == title or ax.get_title().startswith(title + "\n")]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def gids(ax, prefix):
    artists = ax.get_children() + ax.lines + ax.patches
    return [a for a in dict.fromkeys(artists) if (a.get_gid() or "").startswith(prefix)]


def notes(ax):
    """The texts in the axes, as read (notes are wrapped to the panel's width)."""
    return [t.get_text().replace("\n", " ") for t in ax.texts if t.get_text()]  # not the arrows


def title_note(fig, title):
    """The note under the title of the panel titled `title`, as read (the title is wrapped to the panel's width)."""
    return axes_titled(fig, title).get_title().removeprefix(title).strip().replace("\n", " ")


def texts(fig):
    return [text for ax in fig.axes for text in notes(ax)]


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def empty_like(table):
    """An empty table as read back from an empty parquet file: every column of object dtype."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in table.columns})


# --- data selection ---------------------------------------------------------------------------------


def test_best_base_lr_counts_divergence_and_stalling_as_failure():
    runs, _ = synthetic_tables()
    best = best_base_lr_runs(runs)
    chosen = best.groupby(["model", "lr_rule", "batch_size"])["base_lr"].unique()
    assert all(len(v) == 1 for v in chosen)
    assert chosen.loc[("mlp", "linear", 16)][0] == 1.0  # the higher LR scores better where it does not diverge
    assert chosen.loc[("mlp", "linear", 256)][0] == 0.1  # where it diverges, the stable LR wins
    assert len(best) == 2 * 2 * 3 * 2  # every seed of the chosen LR
    # a stalled run ends at chance, but scores 0 like a diverged one: its LR loses to a healthy one
    stalled = runs.assign(status=np.where((runs["batch_size"] == 16) & (runs["base_lr"] == 1.0), "stalled", runs["status"]))
    chosen = best_base_lr_runs(stalled).groupby(["model", "lr_rule", "batch_size"])["base_lr"].unique()
    assert chosen.loc[("mlp", "linear", 16)][0] == 0.1


def test_sharpness_picks_the_best_lr_among_all_runs_and_marks_the_unanalysed(study):
    from batchlab.plots.sharpness import sharpness_at_best_lr

    chosen = sharpness_at_best_lr(study["runs"], study["sharpness"]).set_index("run_id")
    # cnn/constant/B=16: base LR 0.03 (accuracy 0.93) wins over the analysed 0.1 (0.61); it was not analysed
    assert "demo/cnn/bs16/constant/lr0.03/seed0" in chosen.index and "demo/cnn/bs16/constant/lr0.1/seed0" not in chosen.index
    assert chosen.loc["demo/cnn/bs16/constant/lr0.03/seed0", "final_test_acc"] == pytest.approx(0.93)
    assert np.isnan(chosen.loc["demo/cnn/bs16/constant/lr0.03/seed0", "eps_sharpness"])
    row = chosen.loc["demo/cnn/bs64/linear/lr0.1/seed1"]
    assert row["eps_sharpness"] > 0 and row["hessian_trace_ci_low"] < row["hessian_trace"] < row["hessian_trace_ci_high"]


def test_final_sharpness_takes_the_final_step_and_largest_epsilon():
    runs, _ = synthetic_tables()
    runs, sharpness = synthetic_sharpness(runs)
    joined = final_sharpness(runs, sharpness)
    row = joined.set_index("run_id").loc["s/cnn/bs64/linear/lr0.1/seed0"]
    assert row["eps_sharpness"] == (1 + 6) * 2 and row["hessian_lambda_max"] == 3 * 14


def test_sb_and_lb_are_never_stalled_or_diverged():
    from batchlab.plots.sharpness import sb_lb_runs

    statuses = {16: "stalled", 64: "completed", 256: "completed", 512: "diverged"}
    runs = pd.DataFrame([dict(run_id=f"s/m/bs{b}/linear/lr0.1/seed0", study="s", model="m", lr_rule="linear", batch_size=b,
                              base_lr=0.1, seed=0, status=s) for b, s in statuses.items()])
    sharpness = pd.DataFrame([dict(run_id=r, step=step, metric="eps_sharpness_full", epsilon=1e-3, value=1.0 + step,
                                   train_loss=1.0, subset_loss=0.9) for r in runs["run_id"] for step in (1, 10)])
    chosen = sb_lb_runs(runs, sharpness)
    assert set(zip(chosen["batch_size"], chosen["regime"])) == {(64, "SB"), (256, "LB")}


def test_lr_grid_edges_flag_the_ends_of_the_lrs_tried(study):
    from batchlab.plots.critical import lr_grid_edges

    best = study["speedup"][study["speedup"]["lr_rule"] == "best"]
    edges = lr_grid_edges(best, study["runs"])
    by_batch = dict(zip(best["batch_size"], edges))
    assert by_batch == {16: "", 32: "", 64: "smallest", 128: "largest", 256: "largest", 512: "largest"}


def test_describe_b_crit_gives_a_number_only_for_an_accepted_fit():
    from batchlab.plots.critical import describe_b_crit

    ok = describe_b_crit(pd.Series(FITS[("cnn", TARGETS[1])]))
    assert (ok["kind"], ok["value"], ok["text"]) == ("ok", 64.0, "B_crit ≈ 64 [40, 100]")
    assert describe_b_crit(pd.Series(FITS[("cnn", TARGETS[2])]))["text"] == "B_crit > 512"
    assert describe_b_crit(pd.Series(FITS[("cnn", TARGETS[3])]))["kind"] == "below"
    assert describe_b_crit(pd.Series(FITS[("cnn", TARGETS[4])]))["text"] == \
        f"no B_crit: {FIT_STATUS_TEXT['interval_too_wide']}"
    assert describe_b_crit(None) is None


def test_first_target_follows_the_metric_order_then_the_configured_values(study):
    from batchlab.plots.critical import first_target

    critical = study["critical"]
    errors_first = critical["target_metric"] == "test_error"
    shuffled = pd.concat([critical[errors_first], critical[~errors_first]])
    assert first_target(shuffled, "demo") == ("train_loss", "fixed", 1.0)
    assert first_target(critical[critical["target_metric"] == "test_error"], "demo") == ("test_error", "fixed", 0.45)
    assert first_target(critical.iloc[0:0], "demo") is None


def test_noise_scale_runs_keep_healthy_runs_measured_along_training(study):
    from batchlab.plots.critical import noise_scale_runs

    data = noise_scale_runs(study["runs"], study["sharpness"])
    assert set(data["status"]) == {"completed"} and (data["step"] > 0).all() and np.isfinite(data["value"]).all()
    assert "demo/cnn/bs512/linear/lr0.1/seed0" not in set(data["run_id"])  # diverged
    assert "demo/cnn/bs256/linear/lr0.1/seed0" in set(data["run_id"])


def test_pair_title_comes_from_the_run_ids():
    from batchlab.plots.sharpness import pair_title

    assert pair_title("demo/cnn/bs16/linear/lr0.1/seed0", "demo/cnn/bs512/linear/lr0.1/seed0") == \
        "cnn · linear · lr0.1 · seed0\nB=16 vs B=512"
    assert pair_title("g/resnet32/bs16/bn8/linear/lr0.1/seed0", "g/resnet32/bs256/bn8/linear/lr0.4/seed0") == \
        "resnet32 · bn8 · linear · seed0\nB=16 lr0.1 vs B=256 lr0.4"


# --- what the figures draw ---------------------------------------------------------------------------


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_figures_are_written_as_png_and_pdf(tmp_path, study):
    draw_figure("training_curves", tables_for("training_curves", study), tmp_path / "curves.png", tmp_path / "curves.pdf")
    draw_figure("accuracy_vs_batch", {"runs": study["runs"]}, tmp_path / "acc.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "curves.pdf", "curves.png"]  # no temporaries
    with pytest.raises(ValueError, match="unknown figure 'roc'"):
        draw_figure("roc", {}, tmp_path / "x.png")


ONE_PANEL = {"noise_vs_bcrit"}  # one row per model in a single panel


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_of_a_realistic_study_is_wider_than_tall(tmp_path, study, name):
    fig = build_figure(name, tables_for(name, study))
    assert sum(ax.axison for ax in fig.axes) >= (1 if name in ONE_PANEL else 2), f"{name} drew no panels"
    with figure_style():
        fig.savefig(tmp_path / "f.png", dpi=60, bbox_inches="tight")  # the ratio does not depend on dpi
    width, height = Image.open(tmp_path / "f.png").size
    assert width / height >= 1.2, (name, width, height)


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_draws_from_empty_tables(tmp_path, study, name):
    empty = {**study, **{t: empty_like(study[t]) for t in ("speedup", "critical", "sharpness", "interpolation")}}
    draw_figure(name, tables_for(name, empty), tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").size[0] > 300
    if name in ("steps_to_target", "speedup", "best_lr", "noise_vs_bcrit"):
        assert "no speed-up targets configured for this study" in texts(build(name, empty))


def test_empty_speedup_table_read_back_from_parquet_draws(tmp_path, study):
    path = tmp_path / "speedup.parquet"
    study["speedup"].iloc[0:0].astype(object).to_parquet(path)
    speedup = pd.read_parquet(path)
    for name in ("steps_to_target", "speedup", "best_lr"):
        draw_figure(name, {**tables_for(name, study), "speedup": speedup}, tmp_path / f"{name}.png")
    draw_figure("speedup", {"speedup": study["speedup"].assign(reached=False)}, tmp_path / "none.png")
    unreached = {"speedup": study["speedup"].assign(reached=False)}
    assert "no speed-up: the smallest batch never reached a target" in texts(build("speedup", unreached))


def _inside(fig, ax, text):
    box, frame = text.get_window_extent(fig.canvas.get_renderer()), ax.get_window_extent()
    return box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1


def test_steps_to_target_draws_b_crit_by_fit_status_with_labels_inside_the_axes(study):
    fig = build("steps_to_target", study)
    for ax in fig.axes:
        for text in ax.texts:
            assert _inside(fig, ax, text), (ax.get_title(), text.get_text())
    ok = axes_titled(fig, "cnn · train loss ≤ 0.5")
    assert gids(ok, "b_crit_line") and gids(ok, "b_crit_band") and notes(ok) == ["B_crit ≈ 64 [40, 100]"]
    beyond = axes_titled(fig, "cnn · test loss ≤ 1.2")
    assert not gids(beyond, "b_crit_line") and not gids(beyond, "b_crit_band") and gids(beyond, "b_crit_bound")
    assert notes(beyond) == ["B_crit > 512"]
    ok_off_grid = axes_titled(fig, "cnn · train loss ≤ 1")
    assert not gids(ok_off_grid, "b_crit_band") and gids(ok_off_grid, "b_crit_bound")
    assert notes(ok_off_grid) == ["B_crit ≈ 843 [400, 2000] (beyond the grid)"]
    assert notes(axes_titled(fig, "cnn · test error ≤ 0.45")) == ["B_crit < 16"]
    assert not notes(axes_titled(fig, "cnn · test error ≤ 0.35"))  # no number: the note is under the title
    assert title_note(fig, "cnn · test error ≤ 0.35") == f"no B_crit: {FIT_STATUS_TEXT['interval_too_wide']}"
    assert notes(axes_titled(fig, "mlp · test error ≤ 0.35")) == ["no batch size reached this target"]


def covered_points(fig, ax):
    """The data points drawn in a panel (markers, not the bound's tick) that a note inside it covers."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_bbox_patch() or t).get_window_extent(renderer) for t in ax.texts if t.get_text()]
    points = [xy for line in ax.lines if line.get_marker() not in (None, "", "None") and not line.get_gid()
              for xy in line.get_transform().transform(line.get_xydata())]
    return [(x, y) for x, y in points for box in boxes if box.contains(x, y)]


def test_a_note_without_b_crit_goes_under_the_title_and_no_note_covers_data(study):
    """The demo's "mlp · test error ≤ 0.35": points down to B = 256, no B_crit since B = 512 did not reach; its
    note in the lower left corner covered the point at 256."""
    speedup, critical = study["speedup"].copy(), study["critical"].copy()
    panel = (speedup["model"] == "mlp") & (speedup["target_value"] == 0.35)
    speedup.loc[panel & (speedup["batch_size"] < 512), "reached"] = True
    speedup.loc[panel, "steps_to_target"] = 2000 * 16 / speedup.loc[panel, "batch_size"]  # down to the lower left
    fit = (critical["model"] == "mlp") & (critical["target_value"] == 0.35) & (critical["lr_rule"] == "best")
    critical.loc[fit, ["fit_status", "not_reached_reason"]] = ["not_reached", "budget"]
    fig = build("steps_to_target", {**study, "speedup": speedup, "critical": critical})
    ax = axes_titled(fig, "mlp · test error ≤ 0.35")
    assert title_note(fig, "mlp · test error ≤ 0.35") == \
        f"no B_crit: {FIT_STATUS_TEXT['not_reached']} (the runs used up their step budget)"
    assert ax.title.get_window_extent().y0 >= ax.get_window_extent().y1  # above the axes
    assert not notes(ax) and len(ax.lines[0].get_xdata()) == 5
    for panel_ax in visible(fig):
        assert not covered_points(fig, panel_ax), (panel_ax.get_title(), notes(panel_ax))


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_an_unreached_target_says_why(study):
    """The segmentation of Golmant's smoke: a target at or above the initial loss is refused, so no panel point;
    a fit without a number names the runs' reason too."""
    speedup, critical = study["speedup"].copy(), study["critical"].copy()
    for table in (speedup, critical):
        refused, stalled = [(table["model"] == m) & (table["target_value"] == 0.35) for m in ("mlp", "cnn")]
        table["not_reached_reason"] = np.select([refused, stalled], ["target_above_initial", "stalled"], None)
        table["target_initial_value"] = np.where(refused, 0.3, 0.9)
    critical.loc[critical["not_reached_reason"] == "target_above_initial", "fit_status"] = "target_above_initial"
    critical.loc[critical["not_reached_reason"] == "stalled", "fit_status"] = "not_reached"
    tables = {**study, "speedup": speedup, "critical": critical}
    why = f"{FIT_STATUS_TEXT['target_above_initial']} (target 0.35 ≥ initial 0.3)"
    steps = build("steps_to_target", tables)
    assert notes(axes_titled(steps, "mlp · test error ≤ 0.35")) == [f"no batch size reached this target {why}"]
    assert title_note(steps, "cnn · test error ≤ 0.35") == \
        f"no B_crit: {FIT_STATUS_TEXT['not_reached']} (the runs stalled)"
    assert title_note(steps, "mlp · test loss ≤ 1.2") == f"no B_crit: {FIT_STATUS_TEXT['too_few_points']}"
    [note] = notes(axes_titled(build("speedup", tables), "mlp · test error ≤ 0.35"))
    assert note.endswith(why) and note.startswith("no speed-up for this target")


@pytest.mark.slow
def test_the_steps_legend_lists_only_the_b_crit_marks_drawn(study):
    critical = study["critical"]
    in_grid = critical.assign(b_crit=critical["b_crit"].where(critical["b_crit"] != 843.0, 300.0),
                              fit_status=critical["fit_status"].replace(["beyond_grid", "below_grid"], "too_few_points"),
                              b_crit_bound=None)
    no_fit = critical.assign(fit_status="too_few_points", b_crit=np.nan, b_crit_bound=None)
    entries = {"b_crit_line": "fitted B_crit (tuned curve)", "b_crit_band": "its 95% interval",
               "b_crit_bound": "B_crit lies that way (a bound)"}
    for table, expected in ((critical, set(entries)), (in_grid, {"b_crit_line", "b_crit_band"}), (no_fit, set())):
        fig = build("steps_to_target", {**study, "critical": table})
        assert {gid for gid in entries if any(gids(ax, gid) for ax in fig.axes)} == expected
        assert {gid for gid, label in entries.items() if label in legend_texts(fig)} == expected
        assert "perfect scaling" in legend_texts(fig)


def long_named_studies(study):
    """Golmant's smoke in small: long study names and two training fractions, so that each panel's name
    ("golmant_segmentation / resnet20 (100% of the data)") is wider than its panel."""
    tables = combined(*(another_study(study, name, "cnn", ["constant", "linear"], TARGETS[:3], model="resnet20")
                        for name in ("golmant_cifar10", "golmant_segmentation")))
    runs = with_half_the_data(tables["runs"])
    return {**tables, "runs": runs, "curves": fake_curves(runs), "sharpness": fake_sharpness(runs),
            "speedup": with_half_the_data(tables["speedup"]), "critical": with_half_the_data(tables["critical"])}


@pytest.mark.parametrize("name", ["steps_to_target", "speedup", "best_lr", "noise_scale", "training_curves",
                                  "accuracy_vs_base_lr", "generalization_gap"])
@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_panel_titles_are_wrapped_so_that_none_runs_into_its_neighbour(study, name):
    fig = build(name, long_named_studies(study))
    titles = [ax.title for ax in visible(fig)]
    assert len(titles) >= 4 and any("golmant_segmentation / resnet20\n(100% of the data)" in t.get_text() for t in titles)
    boxes = [t.get_window_extent() for t in titles]
    overlapping = [(a.get_text(), b.get_text()) for i, (a, box_a) in enumerate(zip(titles, boxes))
                   for b, box_b in zip(titles[i + 1:], boxes[i + 1:]) if box_a.overlaps(box_b)]
    assert not overlapping


def test_best_lr_marks_exactly_the_points_at_the_edge_of_the_lr_grid(study):
    fig = build("best_lr", study)
    ax = axes_titled(fig, "cnn")
    edge = {(x, round(y, 6)) for line in gids(ax, "lr_grid_edge") for x, y in line.get_xydata()}
    expected = {(b, round(best_lr_choice(b), 6)) for b in (64, 128, 256, 512)}
    assert edge == expected
    assert any("edge of the LR grid" in t for t in legend_texts(fig))


@pytest.mark.slow  # several seconds: `make test`, not `make check`
def test_unhealthy_runs_are_marked_where_they_are_drawn(study):
    runs = study["runs"]
    chosen = best_base_lr_runs(runs)
    chosen_cnn = chosen[(chosen["model"] == "cnn")]
    fig = build("accuracy_vs_batch", study)
    ax = axes_titled(fig, "cnn")
    for status in ("stalled", "diverged"):
        marked = sum(len(line.get_xdata()) for line in gids(ax, f"unhealthy:{status}"))
        assert marked == (chosen_cnn["status"] == status).sum() > 0
    assert "stalled run (2) " in " ".join(legend_texts(fig)) + " "
    fig = build("accuracy_vs_base_lr", study)
    for rule in RULES:
        ax = axes_titled(fig, f"cnn · {rule} rule")
        marked = [y for line in gids(ax, "unhealthy:") for y in line.get_ydata()]
        cell = runs[(runs["model"] == "cnn") & (runs["lr_rule"] == rule)]
        assert len(marked) == (cell["status"] != "completed").sum() > 0 and set(marked) == {0.0}
    fig = build("training_curves", study)
    ax = axes_titled(fig, "cnn · constant rule")
    assert len(gids(ax, "unhealthy:diverged")) == 1 and len(gids(ax, "unhealthy:diverged")[0].get_xdata()) == 1


def test_sharpness_vs_batch_accuracy_agrees_with_accuracy_vs_batch(study):
    acc = build("accuracy_vs_batch", study)
    sharp = build("sharpness_vs_batch", study)
    for model in MODELS:
        for rule in RULES:
            [a] = [ln for ln in gids(axes_titled(acc, model), f"median:{rule}")]
            [s] = [ln for ln in gids(axes_titled(sharp, f"{model} · test accuracy"), f"median:{rule}")]
            np.testing.assert_allclose(a.get_xydata(), s.get_xydata())
    [a] = gids(axes_titled(acc, "cnn"), "median:constant")
    assert a.get_ydata()[0] == pytest.approx(0.9325)  # B=16 at its best base LR 0.03, not the analysed 0.1 (0.61)
    assert "analysed: " in " ".join(texts(sharp))


def test_sharpness_vs_batch_draws_each_trace_with_its_interval(study):
    fig = build("sharpness_vs_batch", study)
    ax = axes_titled(fig, "cnn · Hessian trace")
    chosen = best_base_lr_runs(study["runs"])
    trace = study["sharpness"][study["sharpness"]["metric"] == "hessian_trace"].merge(
        chosen[["run_id", "model", "steps"]], on="run_id")
    trace = trace[(trace["model"] == "cnn") & (trace["step"] == trace["steps"])]
    runs_with_bars = [c for c in ax.containers if (c.lines[0].get_gid() or "").startswith("interval:")]
    bars = [segment for c in runs_with_bars for segment in c.lines[2][0].get_segments()]
    assert sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in bars) == \
        sorted(zip(trace["ci_low"].round(6), trace["ci_high"].round(6)))


def test_sharpness_along_training_plots_against_the_subset_loss(study):
    fig = build("sharpness_along_training", study)
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("cnn · linear"))
    assert ax.get_title().endswith("SB: B=16, LB: B=256")  # B=512 diverged: never the LB
    assert "analysis subset" in ax.get_xlabel()
    rows = study["sharpness"]
    for line in gids(ax, "SB:") + gids(ax, "LB:"):
        run = rows[(rows["run_id"] == line.get_gid().split(":", 1)[1]) & (rows["epsilon"] == 1e-3)].sort_values("step")
        np.testing.assert_allclose(line.get_xdata(), run["subset_loss"])


def test_interpolation_titles_name_both_batch_sizes(study):
    fig = build("interpolation", study)
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert "cnn · linear · lr0.1 · seed0\nB=16 vs B=256" in titles  # B=512 diverged
    assert "mlp · sqrt · lr0.1 · seed0\nB=16 vs B=512" in titles


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_noise_scale_figure_draws_runs_b_crit_and_its_prediction(study):
    fig = build("noise_scale", study)
    ax = axes_titled(fig, "cnn")
    assert gids(ax, "b_crit_line")[0].get_ydata()[0] == 843.0 and gids(ax, "b_crit_band")
    [b_simple], [b_noise] = gids(ax, "predicted:b_simple"), gids(ax, "predicted:b_noise")
    assert (b_simple.get_ydata()[0], b_noise.get_ydata()[0]) == (100.0, 300.0)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert any(t.startswith("B_crit ≈ 843") for t in texts(fig))
    bound = {**study, "critical": study["critical"].assign(fit_status="beyond_grid", b_crit=np.nan, b_crit_bound=">512")}
    fig = build("noise_scale", bound)
    ax = axes_titled(fig, "cnn")
    assert not gids(ax, "b_crit_line") and gids(ax, "b_crit_bound")[0].get_ydata()[0] == 512
    no_targets = build("noise_scale", {**study, "critical": empty_like(study["critical"])})
    assert "no speed-up targets configured for this study" in texts(no_targets)


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_noise_scale_figure_runs_along_the_train_loss_to_the_target_line(study):
    fig = build("noise_scale", study)
    ax = axes_titled(fig, "cnn")
    assert ax.get_xlabel() == "train loss" and ax.get_xscale() == "log" and ax.xaxis_inverted()
    assert ax.get_ylabel() == "B_simple, B_noise"
    run_id = "demo/cnn/bs256/linear/lr0.1/seed0"
    rows = study["sharpness"][(study["sharpness"]["run_id"] == run_id) & (study["sharpness"]["step"] > 0)]
    for measure, metric, style in (("b_simple", "noise_scale", "-"), ("b_noise", "b_noise", "--")):
        [line] = gids(ax, f"{measure}:{run_id}")
        expected = rows[rows["metric"] == metric].sort_values("step")
        np.testing.assert_allclose(line.get_xdata(), expected["train_loss"])  # not the step
        np.testing.assert_allclose(line.get_ydata(), expected["value"])
        assert line.get_linestyle() == style
    [target] = gids(ax, "target_train_loss")
    assert set(target.get_xdata()) == {1.0} and not gids(ax, "read_train_loss")  # the first target: train loss ≤ 1
    assert "the target's train loss\n(where B_crit is predicted)" in legend_texts(fig)
    # a target set by a rule: the line at the model's resolved value, inside the axis however low it lies
    q25 = build("noise_scale", {**study, "critical": with_q25_target(study["critical"].assign(b_noise_train_loss=0.9))})
    ax = axes_titled(q25, "cnn")
    assert set(gids(ax, "target_train_loss")[0].get_xdata()) == {Q25["cnn"]}
    assert min(ax.get_xlim()) < Q25["cnn"] < max(ax.get_xlim())
    # no train-loss target: the line is where the runs reached the test target, and says so
    test_targets = study["critical"][study["critical"]["target_metric"] != "train_loss"].assign(b_noise_train_loss=0.7)
    fig = build("noise_scale", {**study, "critical": test_targets})
    ax = axes_titled(fig, "cnn")
    assert not gids(ax, "target_train_loss") and set(gids(ax, "read_train_loss")[0].get_xdata()) == {0.7}
    assert "train loss where the runs\nreached the target (median)" in legend_texts(fig)
    assert not any(t.startswith("the target's train loss") for t in legend_texts(fig))


@pytest.mark.slow  # a few seconds of drawing: `make test`, not `make check`
def test_noise_scale_figure_draws_both_predictions_and_only_b_simple_without_b_noise(study):
    fig = build("noise_scale", study)
    ax = axes_titled(fig, "cnn")
    [b_simple], [b_noise] = gids(ax, "predicted:b_simple"), gids(ax, "predicted:b_noise")
    assert b_simple.get_xdata()[0] != b_noise.get_xdata()[0] and b_simple.get_marker() != b_noise.get_marker()
    assert b_simple.get_color() != b_noise.get_color()
    assert list(gids(ax, "predicted_interval:b_simple")[0].get_ydata()) == [50.0, 200.0]
    assert list(gids(ax, "predicted_interval:b_noise")[0].get_ydata()) == [150.0, 600.0]
    assert {"B_simple at the target\n(predicted B_crit, 95%)", "B_noise at the target\n(predicted B_crit, 95%)"} <= \
        set(legend_texts(fig))
    # B_noise not measured: B_simple alone, without B_noise's legend entry or its lines along training
    without = study["critical"].assign(b_noise=np.nan, b_noise_ci_low=np.nan, b_noise_ci_high=np.nan, b_noise_n_runs=0)
    sharpness = study["sharpness"][study["sharpness"]["metric"] != "b_noise"]
    fig = build("noise_scale", {**study, "critical": without, "sharpness": sharpness})
    ax = axes_titled(fig, "cnn")
    assert gids(ax, "predicted:b_simple") and not gids(ax, "predicted:b_noise") and not gids(ax, "b_noise:")
    assert ax.get_ylabel() == "B_simple" and gids(ax, "b_simple:")
    assert not any(t.startswith("B_noise") for t in legend_texts(fig))
    # no interval for B_simple, an open-ended one for B_noise: that one runs to the top of the axes
    open_ended = study["critical"].assign(b_simple_ci_low=np.nan, b_simple_ci_high=np.nan, b_noise_ci_high=np.inf)
    ax = axes_titled(build("noise_scale", {**study, "critical": open_ended}), "cnn")
    assert gids(ax, "predicted:b_simple") and not gids(ax, "predicted_interval:b_simple")
    [interval] = gids(ax, "predicted_interval:b_noise")
    assert interval.get_ydata()[0] == 150.0 and interval.get_ydata()[1] == ax.get_ylim()[1] < np.inf


def dots(ax, gid):
    """The (x, y) of the points drawn with `gid` in the noise_vs_bcrit panel (not the arrows), in row order."""
    return sorted((float(x), float(y)) for line in gids(ax, gid) if line.get_gid() == gid and line in ax.lines
                  for x, y in zip(line.get_xdata(), line.get_ydata()))


def row_labels(ax):
    return [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]


def test_noise_vs_bcrit_draws_one_row_per_model_with_the_three_measures(study):
    fig = build("noise_vs_bcrit", study)
    [ax] = visible(fig)
    assert row_labels(ax) == ["demo · mlp (train loss ≤ 1)", "demo · cnn (train loss ≤ 1)"]
    assert list(ax.get_yticks()) == [0, 1] and ax.get_xscale() == "log" and ax.get_xlabel() == "batch size"
    assert dots(ax, "b_crit_value") == [(120.0, -0.25), (843.0, 0.75)]
    assert dots(ax, "b_simple_value") == [(80.0, 0.0), (100.0, 1.0)]
    assert dots(ax, "b_noise_value") == [(250.0, 0.25), (300.0, 1.25)]
    assert sorted(tuple(line.get_xdata()) for line in gids(ax, "b_crit_interval")) == [(60.0, 240.0), (400.0, 2000.0)]
    assert sorted(tuple(line.get_xdata()) for line in gids(ax, "b_noise_interval")) == [(120.0, 500.0), (150.0, 600.0)]
    assert not gids(ax, "b_crit_bound") and not gids(ax, "missing_note")
    assert legend_texts(fig) == ["measured B_crit (tuned curve)", "B_simple = tr(Σ) / |G|² at the target",
                                 "B_noise = tr(HΣ) / GᵀHG at the target"]
    # another study, a target set by a rule and two training fractions: a row each, labelled with its own target
    tables = combined(study, another_study(study, "other", "cnn", RULES, TARGETS))
    critical = with_half_the_data(with_q25_target(tables["critical"]))
    labels = row_labels(visible(build("noise_vs_bcrit", {"critical": critical}))[0])
    assert labels == ["demo · mlp, 100% of the data (train loss ≤ 0.3)", "demo · cnn, 100% of the data (train loss ≤ 0.2)",
                      "other · cnn, 100% of the data (train loss ≤ 0.2)", "demo · mlp, 50% of the data (train loss ≤ 0.3)",
                      "demo · cnn, 50% of the data (train loss ≤ 0.2)", "other · cnn, 50% of the data (train loss ≤ 0.2)"]


def test_noise_vs_bcrit_draws_bounds_and_says_what_is_missing(study):
    critical = study["critical"].copy()
    first = (critical["lr_rule"] == "best") & (critical["target_value"] == TARGETS[0][1])
    cnn, mlp = first & (critical["model"] == "cnn"), first & (critical["model"] == "mlp")
    critical.loc[cnn, ["fit_status", "b_crit", "ci_low", "ci_high", "b_crit_bound", "b_simple_ci_high"]] = \
        ["beyond_grid", np.nan, 512.0, np.inf, ">512", np.inf]
    critical.loc[mlp, ["fit_status", "b_crit", "ci_low", "ci_high", "b_noise", "b_noise_ci_low", "b_noise_ci_high"]] = \
        ["too_few_points", np.nan, np.nan, np.nan, np.nan, np.nan, np.nan]
    fig = build("noise_vs_bcrit", {"critical": critical})
    [ax] = visible(fig)
    assert not gids(ax, "b_crit_value") and not gids(ax, "b_crit_interval")
    assert dots(ax, "b_crit_bound") == [(512.0, 0.75)]  # the bound's tick, in cnn's row
    [arrow] = [a for a in gids(ax, "b_crit_bound") if hasattr(a, "xyann")]
    assert arrow.xyann == (512.0, 0.75) and arrow.xy[0] > 512.0 and arrow.xy[1] == 0.75  # pointing up the batch sizes
    assert dots(ax, "b_simple_value") == [(80.0, 0.0), (100.0, 1.0)] and dots(ax, "b_noise_value") == [(300.0, 1.25)]
    [open_ended] = [line for line in gids(ax, "b_simple_interval") if line.get_ydata()[0] == 1.0]
    assert list(open_ended.get_xdata()) == [50.0, ax.get_xlim()[1]]  # to the right edge
    [note] = gids(ax, "missing_note")
    assert note.get_position()[1] == 0 and note.get_text().replace("\n", " ") == \
        f"no B_crit: {FIT_STATUS_TEXT['too_few_points']} no B_noise: not read at the target"
    assert "a bound on B_crit: it lies that way" in legend_texts(fig) and "measured B_crit (tuned curve)" not in legend_texts(fig)
    # below the grid: the arrow points down; no tuned fit for mlp's target: a note, and no marks in its row
    critical.loc[cnn, ["fit_status", "b_crit_bound"]] = ["below_grid", "<16"]
    [ax] = visible(build("noise_vs_bcrit", {"critical": critical[~mlp]}))
    [arrow] = [a for a in gids(ax, "b_crit_bound") if hasattr(a, "xyann")]
    assert arrow.xyann == (16.0, 0.75) and arrow.xy[0] < 16.0
    assert [t.get_text() for t in gids(ax, "missing_note")] == ["no fit of the tuned curve for this target"]
    assert not [xy for gid in ("b_simple_value", "b_noise_value") for xy in dots(ax, gid) if round(xy[1]) == 0]
    assert row_labels(ax)[0] == "demo · mlp (train loss ≤ 1)"
    # nothing read anywhere: the rows and their notes, on a default axis
    nothing = critical.assign(fit_status="too_few_points", b_crit=np.nan, b_crit_bound=None, b_simple=np.nan, b_noise=np.nan)
    [ax] = visible(build("noise_vs_bcrit", {"critical": nothing}))
    assert len(gids(ax, "missing_note")) == 2 and not any(line.get_gid() for line in ax.lines)
    assert ax.get_xlim() == (1.0, 1000.0)


def test_figures_smk_gives_each_figure_the_tables_it_takes():
    import ast
    import inspect
    import re
    from pathlib import Path

    smk = (Path(__file__).resolve().parents[1] / "workflow/rules/figures.smk").read_text()
    rules = ast.literal_eval(re.search(r"^FIGURES = (\{.*?^\})", smk, flags=re.S | re.M).group(1))
    assert list(rules) == list(FIGURES)
    for name, (tables, _) in rules.items():
        assert set(tables) == set(inspect.signature(FIGURES[name]).parameters), name


# --- targets set by a rule, and several training fractions ------------------------------------------

Q25 = {"mlp": 0.3, "cnn": 0.2}  # each model's resolved lower quartile of its largest batch


def with_q25_target(table):
    """The first target (train loss <= 1) turned into Golmant's rule, resolved per model."""
    first = (table["target_metric"] == TARGETS[0][0]) & (table["target_value"] == TARGETS[0][1])
    q25 = table[first].assign(target_rule="largest_batch_q25", target_value=table.loc[first, "model"].map(Q25),
                              target_batch_size=pd.array([512] * first.sum(), dtype="Int64"), target_fallback=False)
    return pd.concat([q25, table[~first]], ignore_index=True)


@pytest.mark.slow  # several seconds: `make test`, not `make check`
def test_a_rule_target_is_one_column_titled_with_each_models_own_value(study):
    from batchlab.plots.critical import first_target, fit_row

    q25 = {**study, "speedup": with_q25_target(study["speedup"]), "critical": with_q25_target(study["critical"])}
    rule = ("train_loss", "largest_batch_q25", None)
    assert first_target(q25["critical"], "demo") == rule
    assert fit_row(q25["critical"], "demo", "cnn", rule)["b_crit"] == 843.0
    fig = build("steps_to_target", q25)
    suffix = "\n(lower quartile of the largest batch)"  # a panel is one model: no "per model"
    ok_off_grid = axes_titled(fig, f"cnn · train loss ≤ 0.2{suffix}")
    assert notes(ok_off_grid) == ["B_crit ≈ 843 [400, 2000] (beyond the grid)"]
    assert notes(axes_titled(fig, f"mlp · train loss ≤ 0.3{suffix}")) == ["B_crit ≈ 120 [60, 240]"]
    assert len(fig.axes) == len(MODELS) * len(TARGETS)  # one column for the rule, not one per resolved value
    speedup = build("speedup", q25)
    assert {ax.get_title() for ax in speedup.axes} >= {f"cnn · train loss ≤ 0.2{suffix}", "cnn · train loss ≤ 0.5"}
    assert "train loss ≤ lower quartile of the largest batch" in legend_texts(build("best_lr", q25))
    noise = build("noise_scale", q25)
    assert any("train loss ≤ 0.2 (lower quartile of the largest batch, per model)" in t
               for t in notes(axes_titled(noise, "cnn")))


def with_half_the_data(table, **changes):
    """The table again at train_fraction 0.5 (run ids made unique), with `changes` to those rows."""
    half = table.assign(train_fraction=0.5, **changes)
    if "run_id" in half:
        half = half.assign(run_id=half["run_id"] + "/frac0.5")
    return pd.concat([table, half], ignore_index=True)


@pytest.mark.slow
def test_each_training_fraction_gets_its_own_panels_and_fits(study):
    from batchlab.plots.critical import fit_row

    critical = study["critical"]
    half_fit = (critical["model"] == "cnn") & (critical["lr_rule"] == "best") & (critical["target_value"] == 0.5)
    halves = critical.assign(train_fraction=0.5, b_crit=np.where(half_fit, 32.0, critical["b_crit"]),
                             ci_low=np.where(half_fit, 20.0, critical["ci_low"]),
                             ci_high=np.where(half_fit, 50.0, critical["ci_high"]))
    runs = with_half_the_data(study["runs"])
    tables = {**study, "runs": runs, "curves": fake_curves(runs), "sharpness": fake_sharpness(runs),
              "speedup": with_half_the_data(study["speedup"]), "critical": pd.concat([critical, halves])}
    target = ("train_loss", "fixed", 0.5)
    assert fit_row(tables["critical"], "demo", "cnn", target, 0.5)["b_crit"] == 32.0
    assert fit_row(tables["critical"], "demo", "cnn", target)["b_crit"] == 64.0
    fig = build("steps_to_target", tables)
    assert notes(axes_titled(fig, "cnn (100% of the data)\ntrain loss ≤ 0.5")) == ["B_crit ≈ 64 [40, 100]"]
    assert notes(axes_titled(fig, "cnn (50% of the data)\ntrain loss ≤ 0.5")) == ["B_crit ≈ 32 [20, 50]"]
    assert len(fig.axes) == 2 * len(MODELS) * len(TARGETS)
    for name in ("speedup", "best_lr", "noise_scale", "accuracy_vs_batch", "training_curves", "sharpness_vs_batch",
                 "sharpness_along_training"):
        titles = {ax.get_title() for ax in build(name, tables).axes}
        assert any(t.startswith("cnn (50% of the data)") for t in titles), (name, titles)
        assert not any(t.startswith("cnn ·") or t == "cnn" for t in titles), (name, titles)
    # the best base LR is chosen per fraction: the half-data runs' own accuracies decide theirs
    low_lr_wins = runs["run_id"].str.endswith("frac0.5") & (runs["base_lr"] == 0.03) & (runs["status"] == "completed")
    chosen = best_base_lr_runs(runs.assign(final_test_acc=runs["final_test_acc"].where(~low_lr_wins, 0.99)))
    assert set(chosen.loc[chosen["train_fraction"] == 0.5, "base_lr"]) == {0.03}
    pd.testing.assert_frame_equal(chosen[chosen["train_fraction"] == 1.0].reset_index(drop=True),
                                  best_base_lr_runs(study["runs"]).reset_index(drop=True))


# --- a language model's perplexity, a segmentation's mean IoU ----------------------------------------


def task_runs(task):
    """One model, three batch sizes, two base LRs, three seeds; B=256's seed 2 diverges. Base LR 0.3 has the
    better test accuracy but the worse perplexity or mean IoU: the task's own measure must pick 0.1."""
    rows = []
    for b in (16, 64, 256):
        for base_lr in (0.1, 0.3):
            for seed in (0, 1, 2):
                diverged = b == 256 and seed == 2
                ppl = (30 + b / 8) * (1 + 0.01 * seed) * (2 if base_lr == 0.3 else 1)
                miou = (0.7 - b / 2000) * (1 - 0.01 * seed) / (2 if base_lr == 0.3 else 1)
                rows.append(dict(
                    run_id=f"t/m/bs{b}/linear/lr{base_lr}/seed{seed}", study="t", task=task, train_fraction=1.0, model="m",
                    lr_rule="linear", batch_size=b, base_lr=base_lr, lr=base_lr, seed=seed,
                    status="diverged" if diverged else "completed", final_train_loss=np.nan if diverged else 2.0,
                    final_test_loss=np.nan if diverged else 3.0 + b / 1000,
                    final_test_acc=np.nan if diverged else 0.4 + base_lr,
                    final_test_perplexity=np.nan if diverged or task != "language_model" else ppl,
                    final_test_miou=np.nan if diverged or task != "segmentation" else miou))
    return pd.DataFrame(rows)


def test_a_language_model_is_drawn_by_its_test_perplexity_on_a_log_axis():
    runs = task_runs("language_model")
    fig = build("accuracy_vs_batch", {"runs": runs})
    ax = axes_titled(fig, "m")
    assert ax.get_ylabel() == "final test perplexity" and ax.get_yscale() == "log"
    [line] = gids(ax, "median:linear")
    expected = runs[(runs["base_lr"] == 0.1)].groupby("batch_size")["final_test_perplexity"].median()
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), expected.to_numpy())  # base LR 0.1: the lower perplexity
    [diverged] = gids(ax, "unhealthy:diverged")
    assert list(diverged.get_ydata()) == [0.97]  # no perplexity: on the top edge, where perplexity is worst
    assert fig._suptitle.get_text().startswith("Test perplexity against batch size")
    assert any("no perplexity: on the top edge" in t for t in legend_texts(fig))
    gap = build("generalization_gap", {"runs": runs})
    assert axes_titled(gap, "m · test perplexity").get_yscale() == "log"
    axes_titled(gap, "m · test loss − train loss")


def test_a_segmentation_is_drawn_by_its_test_mean_iou():
    runs = task_runs("segmentation")
    fig = build("accuracy_vs_batch", {"runs": runs})
    ax = axes_titled(fig, "m")
    assert ax.get_ylabel() == "final test mean IoU" and ax.get_yscale() == "linear"
    [line] = gids(ax, "median:linear")
    expected = runs[(runs["base_lr"] == 0.1)].groupby("batch_size")["final_test_miou"].median()
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), expected.to_numpy())
    assert list(gids(ax, "unhealthy:diverged")[0].get_ydata()) == [0.03]
    assert fig._suptitle.get_text().startswith("Test mean IoU against batch size")
    axes_titled(build("generalization_gap", {"runs": runs}), "m · test mean IoU")


def test_classification_figures_keep_test_accuracy(study):
    fig = build("accuracy_vs_batch", study)
    ax = axes_titled(fig, "cnn")
    assert ax.get_ylabel() == "final test accuracy" and ax.get_yscale() == "linear"
    assert fig._suptitle.get_text().startswith("Test accuracy against batch size")
    assert any("no accuracy: on the bottom edge" in t for t in legend_texts(fig))
    axes_titled(build("generalization_gap", study), "cnn · test error")
    # a runs table without the task and fraction columns is classification on the whole training set
    old = study["runs"].drop(columns=["task", "train_fraction"])
    pd.testing.assert_frame_equal(best_base_lr_runs(old).drop(columns="train_fraction"),
                                  best_base_lr_runs(study["runs"]).drop(columns=["task", "train_fraction"]))


# --- several studies, LR rules and domains in one config: every panel has data ----------------------

TABLES = ("runs", "curves", "sharpness", "interpolation", "speedup", "critical")


def another_study(tables, name, source_model, rules, targets, analysed=True, **changes):
    """The demo's runs of `source_model` under `rules`, with their curves, sharpness (where `analysed`) and speed-up
    and fits of `targets` only, as study `name` (run ids renamed), with `changes` to its runs (model, task, ...)."""
    runs = tables["runs"][(tables["runs"]["model"] == source_model) & tables["runs"]["lr_rule"].isin(rules)]
    ids = dict(zip(runs["run_id"], name + runs["run_id"].str.removeprefix("demo")))

    def renamed(table):
        return table[table["run_id"].isin(ids)].assign(run_id=lambda t: t["run_id"].map(ids))

    def of_targets(table):
        chosen = pd.Series(list(zip(table["target_metric"], table["target_value"])), index=table.index).isin(targets)
        table = table[(table["model"] == source_model) & table["lr_rule"].isin([*rules, "best"]) & chosen]
        return table.assign(study=name, model=changes.get("model", source_model))

    return dict(runs=runs.assign(study=name, run_id=runs["run_id"].map(ids), **changes), curves=renamed(tables["curves"]),
                sharpness=renamed(tables["sharpness"]).iloc[:None if analysed else 0],
                speedup=of_targets(tables["speedup"]), critical=of_targets(tables["critical"]))


def combined(*parts):
    return {t: pd.concat([p[t] for p in parts if t in p], ignore_index=True) for t in TABLES if any(t in p for p in parts)}


def visible(fig):
    return [ax for ax in fig.axes if ax.axison]


def shows_something(ax):
    """A line or marker with data, a filled area or error bars, or a note saying why there is none."""
    return any(len(line.get_xdata()) for line in ax.lines) or bool(ax.collections) or bool(notes(ax))


def mixed_domains(study):
    """The demo (classification on MNIST-1D, three rules, five targets) beside a language model (one rule, two
    targets, never analysed) and a segmentation (two rules, two other targets), as the report will hold them."""
    text = another_study(study, "text", "mlp", ["constant"], TARGETS[:2], analysed=False, model="lstm_lm",
                         dataset="pydoc_text", task="language_model",
                         final_test_perplexity=lambda t: np.exp(4 * t["final_test_loss"]))
    shapes = another_study(study, "shapes", "cnn", ["constant", "linear"], TARGETS[2:4], model="drn", dataset="shapes",
                           task="segmentation", final_test_miou=lambda t: 0.8 * t["final_test_acc"])
    return combined(study, text, shapes)


@pytest.mark.slow
def test_a_one_rule_study_beside_a_three_rule_study_draws_no_empty_panels(study):
    tables = combined(study, another_study(study, "keskar", "mlp", ["constant"], []))
    figs = {name: build(name, tables) for name in FIGURES}
    for name, fig in figs.items():
        assert all(shows_something(ax) for ax in visible(fig)), name
    runs = tables["runs"]
    for name in ("training_curves", "accuracy_vs_base_lr"):
        fig = figs[name]
        assert len(visible(fig)) == len(runs.groupby(["study", "model", "lr_rule"])) == 2 * 3 + 1, name
        titles = {ax.get_title() for ax in visible(fig)}
        assert "keskar / mlp · constant rule" in titles and "keskar / mlp · linear rule" not in titles, name


@pytest.mark.slow
def test_every_figure_draws_three_domains_in_one_config_without_an_empty_panel(study):
    tables = mixed_domains(study)
    figs = {name: build(name, tables) for name in FIGURES}
    for name, fig in figs.items():
        assert visible(fig) and all(shows_something(ax) for ax in visible(fig)), name
    runs, speedup = tables["runs"], tables["speedup"]
    curves = figs["training_curves"]
    assert len(visible(curves)) == len(runs.groupby(["study", "model", "lr_rule"])) == 2 * 3 + 1 + 2
    steps = figs["steps_to_target"]
    assert len(visible(steps)) == len(speedup.groupby(["study", "model", "target_metric", "target_value"])) == 10 + 2 + 2
    titles = {ax.get_title() for ax in visible(steps)}
    assert titles >= {"text / lstm_lm · train loss ≤ 1", "shapes / drn · test loss ≤ 1.2"}
    acc = figs["accuracy_vs_batch"]
    lm, seg = axes_titled(acc, "text / lstm_lm"), axes_titled(acc, "shapes / drn")
    assert (lm.get_ylabel(), lm.get_yscale()) == ("final test perplexity", "log")
    assert (seg.get_ylabel(), axes_titled(acc, "demo / cnn").get_ylabel()) == ("final test mean IoU", "final test accuracy")
    by_lr = figs["accuracy_vs_base_lr"]
    assert axes_titled(by_lr, "text / lstm_lm · constant rule").get_yscale() == "log"
    assert axes_titled(by_lr, "shapes / drn · constant rule").get_ylabel() == "final test mean IoU"
    # the language model was never analysed: no sharpness panel, not even one of its perplexity
    sharp = figs["sharpness_vs_batch"]
    assert not [ax for ax in visible(sharp) if ax.get_title().startswith("text")]
    axes_titled(sharp, "shapes / drn · test mean IoU")


@pytest.mark.slow
def test_many_panels_wrap_into_a_figure_of_a_windows_shape(study):
    """Seven one-rule, one-target studies (the Golmant smoke report's shape): rows of four (five targets), not a
    column of seven, each panel as large as in a small figure."""
    tables = combined(*(another_study(study, f"s{i}", "mlp", ["constant"], TARGETS[:1]) for i in range(7)))
    for name, n_cols in (("training_curves", 4), ("steps_to_target", 5), ("accuracy_vs_batch", 4)):
        fig = build(name, tables)
        axes = visible(fig)
        assert len(axes) == 7 and axes[0].get_gridspec().get_geometry() == (2, n_cols), name
        width, height = fig.get_size_inches()
        assert width <= MAX_WIDTH and 1.3 <= width / height <= 3.5, (name, width, height)

    def panel_inches(fig, ax):
        return ax.get_position().width * fig.get_figwidth(), ax.get_position().height * fig.get_figheight()

    many = build("training_curves", tables)
    alone = build("training_curves", another_study(study, "s", "mlp", ["constant"], TARGETS[:1]))
    assert panel_inches(many, axes_titled(many, "s0 / mlp · constant rule")) == \
        pytest.approx(panel_inches(alone, alone.axes[0]), rel=0.25)


def test_close_batch_sizes_get_clearly_different_colours():
    from batchlab.plots.common import batch_colors

    sizes = [16, 32, 64, 128, 256, 512, 400]
    colors = batch_colors(sizes)
    rgb = np.array([colors[b][:3] for b in sorted(sizes)])
    distance = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert distance[~np.eye(len(sizes), dtype=bool)].min() > 0.3  # by log size, 400 and 512 differed by 0.21
    assert set(batch_colors([32, 400])) == {32, 400} and batch_colors([32, 400])[32] != batch_colors([32, 400])[400]


def test_best_lr_draws_the_lrs_tried_in_every_panel_with_several_studies(study):
    keskar = another_study(study, "keskar", "mlp", ["constant"], [])  # runs, but no speed-up targets
    for tables, panels in ((combined(study, keskar), MODELS),
                           (combined(study, another_study(study, "other", "cnn", RULES, TARGETS)),
                            [f"{s} / {m}" for s in ("demo", "other") for m in MODELS if (s, m) != ("other", "mlp")])):
        fig = build("best_lr", tables)
        assert len(visible(fig)) == len(panels)
        for panel in panels:
            ax = axes_titled(fig, panel)
            [band] = gids(ax, "lrs_tried")
            model = panel.split(" / ")[-1]
            study_name = panel.split(" / ")[0] if " / " in panel else "demo"
            runs = tables["runs"][(tables["runs"]["study"] == study_name) & (tables["runs"]["model"] == model)]
            lows, highs = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
            assert (lows, highs) == pytest.approx((runs["lr"].min(), runs["lr"].max()))


def test_best_lr_marks_the_edges_the_speedup_table_names(study):
    edges = {16: "only", 128: "high", 256: "high", 512: "low"}
    speedup = study["speedup"].assign(best_lr_edge=study["speedup"]["batch_size"].map(edges).astype(object))
    fig = build("best_lr", {**study, "speedup": speedup.where(speedup.notna(), None)})
    ax = axes_titled(fig, "cnn")
    edge = {(x, round(y, 6)) for line in gids(ax, "lr_grid_edge") for x, y in line.get_xydata()}
    assert edge == {(b, round(best_lr_choice(b), 6)) for b in edges}
    assert "at an edge of its rule's base LRs\n(or the only one tried):\nthe optimum may lie beyond" in legend_texts(fig)
    inside = build("best_lr", {**study, "speedup": study["speedup"].assign(best_lr_edge=None)})
    assert not gids(axes_titled(inside, "cnn"), "lr_grid_edge")[0].get_xydata().size
    assert not any("edge" in t for t in legend_texts(inside))
