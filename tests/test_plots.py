import pytest
import numpy as np
import pandas as pd

from batchlab.plots import best_base_lr_runs, plot_accuracy_vs_batch, plot_training_curves


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


def test_best_base_lr_counts_divergence_as_failure():
    runs, _ = synthetic_tables()
    best = best_base_lr_runs(runs)
    chosen = best.groupby(["model", "lr_rule", "batch_size"])["base_lr"].unique()
    assert all(len(v) == 1 for v in chosen)
    assert chosen.loc[("mlp", "linear", 16)][0] == 1.0  # the higher LR scores better where it does not diverge
    assert chosen.loc[("mlp", "linear", 256)][0] == 0.1  # where it diverges, the stable LR wins
    assert len(best) == 2 * 2 * 3 * 2  # every seed of the chosen LR


def test_figures_are_written_as_png_and_pdf(tmp_path):
    runs, curves = synthetic_tables()
    plot_training_curves(runs, curves, tmp_path / "curves.png", tmp_path / "curves.pdf")
    plot_accuracy_vs_batch(runs, tmp_path / "acc.png", tmp_path / "acc.pdf")
    for name in ("curves.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("curves.pdf", "acc.pdf"):
        assert (tmp_path / name).read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.pdf", "acc.png", "curves.pdf", "curves.png"]  # no temporaries


def synthetic_sharpness(runs):
    rows = []
    for run in runs.itertuples():
        final = 100
        steps = [0, 10, 100] if run.seed == 0 else [100]
        for step in steps:
            train_loss = 2.3 * np.exp(-step / 30) + 0.01
            sharp = (1 + np.log2(run.batch_size)) * (1 + step / 100) if run.batch_size > 16 else 10 / (1 + step / 10)
            for metric, eps, value in (("eps_sharpness_full", 1e-3, sharp), ("eps_sharpness_full", 5e-4, sharp / 2),
                                       ("hessian_lambda_max", np.nan, 3 * sharp)):
                rows.append(dict(run_id=run.run_id, step=step, train_loss=train_loss, metric=metric, epsilon=eps, value=value))
    return runs.assign(steps=100, final_test_acc=runs["final_test_acc"]), pd.DataFrame(rows)


def test_sharpness_figures(tmp_path):
    from batchlab.plots import final_sharpness, plot_sharpness_along_training, plot_sharpness_vs_batch

    runs, _ = synthetic_tables()
    runs, sharpness = synthetic_sharpness(runs)
    joined = final_sharpness(runs, sharpness)
    row = joined.set_index("run_id").loc["s/cnn/bs64/linear/lr0.1/seed0"]
    assert row["eps_sharpness"] == (1 + 6) * 2 and row["hessian_lambda_max"] == 3 * 14  # final step, largest epsilon
    plot_sharpness_vs_batch(runs, sharpness, tmp_path / "svb.png")
    plot_sharpness_along_training(runs, sharpness, tmp_path / "along.png")
    assert (tmp_path / "svb.png").stat().st_size > 10_000 and (tmp_path / "along.png").stat().st_size > 10_000


def test_interpolation_figure_and_empty_inputs(tmp_path):
    from batchlab.plots import draw_figure

    alphas = np.linspace(-1, 2, 7)
    interp = pd.concat([
        pd.DataFrame(dict(pair_id=f"s/{m}/linear/lr0.1/seed0/bs16_vs_bs256", alpha=alphas, split=split,
                          loss=0.1 + alphas ** 2 * (2 if split == "test" else 1), accuracy=0.9 - 0.1 * np.abs(alphas), bn_mode="none"))
        for m in ("mlp", "cnn") for split in ("train", "test")
    ])
    draw_figure("interpolation", {"interpolation": interp}, tmp_path / "i.png", tmp_path / "i.pdf")
    assert (tmp_path / "i.png").stat().st_size > 10_000
    draw_figure("interpolation", {"interpolation": interp.iloc[0:0]}, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").exists()
    with pytest.raises(ValueError, match="unknown figure 'roc'"):
        draw_figure("roc", {}, tmp_path / "x.png")


def synthetic_speedup():
    from batchlab.speedup import speedup_tables
    from tests.test_speedup import synthetic_runs

    runs, curves = synthetic_runs(seeds=(0, 1))
    return runs, speedup_tables(runs, curves, {"s": {"targets": {"train_loss": [0.1]}, "n_bootstrap": 50}})


def test_speedup_figures(tmp_path):
    from batchlab.plots import draw_figure

    runs, (speed, crit) = synthetic_speedup()
    draw_figure("steps_to_target", {"speedup": speed, "critical": crit}, tmp_path / "steps.png")
    draw_figure("speedup", {"speedup": speed}, tmp_path / "speedup.png")
    draw_figure("best_lr", {"speedup": speed}, tmp_path / "lr.png")
    for name in ("steps.png", "speedup.png", "lr.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    draw_figure("speedup", {"speedup": speed.assign(reached=False)}, tmp_path / "none.png")  # nothing reached: a note
    assert (tmp_path / "none.png").exists()


def test_masters_luschi_and_gap_figures(tmp_path):
    from batchlab.plots import draw_figure

    runs, _ = synthetic_tables()
    runs = runs.assign(lr=runs["base_lr"] * runs["batch_size"] / 64, final_train_loss=0.1,
                       final_test_loss=0.2 + runs["batch_size"] / 1000)
    draw_figure("accuracy_vs_base_lr", {"runs": runs}, tmp_path / "ml.png", tmp_path / "ml.pdf")
    draw_figure("generalization_gap", {"runs": runs}, tmp_path / "gap.png")
    assert (tmp_path / "ml.png").stat().st_size > 10_000 and (tmp_path / "gap.png").stat().st_size > 10_000
