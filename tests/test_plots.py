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
