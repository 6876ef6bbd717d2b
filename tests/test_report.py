import numpy as np
import pandas as pd
from docutils.core import publish_parts

from batchlab.report import headline_target, summary_rst, summary_table
from tests.test_plots import synthetic_sharpness, synthetic_tables


def critical_rows():
    return pd.DataFrame([
        dict(study="s", model=m, lr_rule="best", target_metric="train_loss", target_value=0.5, b_crit=b, s_min=100.0,
             ci_low=b / 2, ci_high=b * 2, n_points=3, b_noise_predicted=b * 1.5)
        for m, b in (("mlp", 40.0), ("cnn", np.nan))
    ])


def test_headline_target_prefers_train_loss_then_order_given():
    assert headline_target({"test_error": [0.2], "train_loss": [0.5, 0.1]}) == ("train_loss", 0.5)
    assert headline_target({"test_error": [0.2]}) == ("test_error", 0.2)
    assert headline_target({}) is None


def test_summary_picks_best_batch_b_crit_and_sharpness_ratio():
    runs, _ = synthetic_tables()
    runs, sharpness = synthetic_sharpness(runs)
    runs = runs.assign(final_train_loss=0.1, final_test_loss=0.3)
    table = summary_table(runs, sharpness, critical_rows(), {"s": {"targets": {"train_loss": [0.5]}}})
    mlp = table.set_index("model").loc["mlp"]
    assert mlp["best_batch_size"] == 16 and mlp["best_test_acc"] > 0.9  # accuracy falls with batch size
    assert (mlp["b_crit"], mlp["b_crit_ci_low"], mlp["b_crit_ci_high"], mlp["b_noise_predicted"]) == (40, 20, 80, 60)
    # synthetic final sharpness: bs16 -> 10 / 11, bs256 -> (1 + 8) * 2 = 18
    assert mlp["sharpness_ratio"] == (18 / (10 / 11))
    rst = summary_rst(table)
    assert "**Study s**" in rst and "40 [20, 80]" in rst and "– [–, –]" in rst  # cnn's fit failed
    html = publish_parts(rst, writer="html")["html_body"]
    assert html.count("<tr>") == 3  # header + two models: the list-table is valid RST
