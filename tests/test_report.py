import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from batchlab.report import b_crit_text, build_report, headline_target, summary_display, summary_table  # noqa: E402
from tests.browser import render  # noqa: E402
from tests.test_sharpness_ratio import fake_runs, fake_sharpness  # noqa: E402
from batchlab.sharpness_ratio import sharpness_ratios  # noqa: E402

SETTINGS = {"k": {"targets": {"train_loss": [0.5]}}}


def runs_with_lrs(extra_lr_status: str | None = None) -> pd.DataFrame:
    runs = fake_runs(batch_sizes=(32, 128, 400))
    runs = runs.assign(lr=runs["base_lr"], final_test_acc=0.95 - runs["batch_size"] / 1000, steps=100, planned_steps=100,
                       device="cpu (x86_64, 1 threads)", stop_reason="budget", final_train_loss=0.1)
    if extra_lr_status is None:
        return runs
    extra = runs.assign(base_lr=1.0, lr=1.0, status=extra_lr_status, final_test_acc=0.99, stop_reason=extra_lr_status,
                        run_id=runs["run_id"].str.replace("lr0.001", "lr1"))
    return pd.concat([runs, extra], ignore_index=True)


def critical_rows(**fit) -> pd.DataFrame:
    row = dict(study="k", model="mlp", lr_rule="best", target_metric="train_loss", target_value=0.5, b_crit=40.0,
               s_min=100.0, ci_low=20.0, ci_high=80.0, n_points=3, fit_status="ok", b_crit_bound=None,
               b_noise_predicted=60.0, b_noise_ci_low=50.0, b_noise_ci_high=70.0, b_noise_n_runs=4)
    return pd.DataFrame([{**row, **fit}])


def test_headline_target_prefers_train_loss_then_order_given():
    assert headline_target({"test_error": [0.2], "train_loss": [0.5, 0.1]}) == ("train_loss", 0.5)
    assert headline_target({"test_error": [0.2]}) == ("test_error", 0.2)
    assert headline_target({}) is None


def test_summary_gives_health_best_batch_b_crit_and_sharpness_ratio():
    runs = runs_with_lrs()
    ratios = sharpness_ratios(runs, fake_sharpness(runs))
    table = summary_table(runs, critical_rows(), ratios, SETTINGS)
    row = table.iloc[0]
    assert (row["n_runs"], row["n_completed"], row["n_diverged"], row["n_stalled"]) == (9, 9, 0, 0)
    assert row["best_batch_size"] == 32 and row["best_test_acc"] == pytest.approx(0.918)
    assert (row["b_crit"], row["b_crit_ci_low"], row["b_crit_ci_high"], row["b_noise_predicted"]) == (40, 20, 80, 60)
    assert row["sharpness_ratio"] == pytest.approx(np.exp(np.log([4.0, 5.0, 6.0]).mean()))
    shown = summary_display(table).iloc[0]
    assert shown["B_crit [95% interval]"] == "40 [20, 80]" and shown["noise-scale prediction [95%]"] == "60 [50, 70]"
    assert shown["sharpness LB / SB [95%]"].startswith("4.93 [")


@pytest.mark.parametrize("status", ["diverged", "stalled"])
def test_a_failing_lr_leaves_the_summary_unchanged_but_is_counted(status):
    base = runs_with_lrs()
    runs = runs_with_lrs(extra_lr_status=status)
    critical = critical_rows()
    before = summary_table(base, critical, sharpness_ratios(base, fake_sharpness(base)), SETTINGS)
    after = summary_table(runs, critical, sharpness_ratios(runs, fake_sharpness(runs)), SETTINGS)
    counts = ["n_runs", "n_completed", "n_diverged", "n_stalled"]
    assert after.iloc[0][f"n_{status}"] == 9 and after.iloc[0]["n_runs"] == 18
    pd.testing.assert_frame_equal(before.drop(columns=counts), after.drop(columns=counts))


def test_b_crit_shows_a_bound_or_the_reason_never_an_extrapolated_number():
    assert b_crit_text(np.nan, 600.0, np.inf, "beyond_grid", ">600") == ">600 (beyond the largest batch)"
    assert b_crit_text(np.nan, 1.0, 5000.0, "interval_too_wide", None) == "– (interval wider than 100×)"
    assert b_crit_text(476.2, 372.0, 609.0, "ok", None) == "476 [372, 609]"
    table = summary_table(runs_with_lrs(), critical_rows(b_crit=np.nan, fit_status="beyond_grid", b_crit_bound=">400",
                                                         ci_low=400.0, ci_high=np.inf), pd.DataFrame(columns=["study", "model", "metric", "epsilon"]), SETTINGS)
    assert summary_display(table).iloc[0]["B_crit [95% interval]"] == ">400 (beyond the largest batch)"


def test_a_study_without_targets_says_so():
    table = summary_table(runs_with_lrs(), critical_rows().iloc[0:0], pd.DataFrame(columns=["study", "model", "metric", "epsilon"]),
                          {"k": {"targets": {}}})
    shown = summary_display(table).iloc[0]
    assert shown["target"] == "none configured" and shown["B_crit [95% interval]"] == "–"


def small_png(path) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([1, 2, 3])
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def report_page(tmp_path, figures) -> str:
    runs = runs_with_lrs(extra_lr_status="stalled")
    ratios = sharpness_ratios(runs, fake_sharpness(runs))
    summary = summary_table(runs, critical_rows(), ratios, SETTINGS)
    config = {"studies": {"k": {"dataset": "mnist1d", "batch_sizes": [32, 128, 400],
                                "budget": {"epochs": 800, "stop": {"train_loss": 0.01}}}}}
    page = build_report({"runs": runs, "critical": critical_rows(), "ratios": ratios}, summary, figures, config,
                        {"commit": "abc123", "dirty": True}, {"torch": "2.14.1"})
    path = tmp_path / "report.html"
    path.write_text(page)
    return path


def test_report_page_holds_summary_tables_figures_and_provenance_in_a_browser(tmp_path):
    figures = [dict(name=f"fig{i}", section=s, png=small_png(tmp_path / f"fig{i}.png"), caption="A caption with ``code``.")
               for i, s in enumerate("123")]
    seen = render(report_page(tmp_path, figures))
    assert seen["console_errors"] == []
    assert seen["title"] == "batchlab report"
    text = seen["text"]
    for expected in ("Summary", "40 [20, 80]", "60 [50, 70]", "Runs that did not train", "k/mlp/bs32/constant/lr1/seed0",
                     "ε-sharpness, full space (%)", "Provenance", "abc123", "uncommitted", "torch 2.14.1",
                     "cpu (x86_64, 1 threads)", "Trained to convergence (Keskar's protocol"):
        assert expected in text, expected
    assert [img["alt"] for img in seen["images"]] == ["fig0", "fig1", "fig2"]
    width, height = seen["viewport"]
    for img in seen["images"]:
        assert img["complete"] and img["natural_width"] > 0
        assert img["width"] <= width and img["height"] <= 0.9 * height  # seen whole at 1400x900
    assert seen["zoomed_class"] == "whole"
    assert "Trained for equal epochs" not in text


def test_the_browser_check_catches_a_broken_figure(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(base64.b64decode(base64.b64encode(b"\x89PNG not really")))
    seen = render(report_page(tmp_path, [dict(name="broken", section="1", png=broken, caption="x")]))
    assert seen["images"][0]["natural_width"] == 0
