import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from batchlab.findings import findings_table  # noqa: E402
from batchlab.speedup import SPEEDUP_COLUMNS  # noqa: E402
from batchlab.report import b_crit_text, build_report, prediction_text, headline_target, summary_display, summary_table  # noqa: E402
from tests.browser import render  # noqa: E402
from tests.test_sharpness_ratio import fake_runs, fake_sharpness  # noqa: E402
from batchlab.sharpness_ratio import sharpness_ratios  # noqa: E402

SETTINGS = {"k": {"speedup": {"targets": {"train_loss": [0.5]}}}}


def runs_with_lrs(extra_lr_status: str | None = None) -> pd.DataFrame:
    runs = fake_runs(batch_sizes=(32, 128, 400))
    runs = runs.assign(lr=runs["base_lr"], final_test_acc=0.95 - runs["batch_size"] / 1000, steps=100, planned_steps=100,
                       device="cpu (x86_64, 1 threads)", stop_reason="budget", final_train_loss=0.1,
                       task="classification", train_fraction=1.0, final_train_perplexity=np.nan,
                       final_test_perplexity=np.nan, final_train_miou=np.nan, final_test_miou=np.nan)
    if extra_lr_status is None:
        return runs
    extra = runs.assign(base_lr=1.0, lr=1.0, status=extra_lr_status, final_test_acc=0.99, stop_reason=extra_lr_status,
                        run_id=runs["run_id"].str.replace("lr0.001", "lr1"))
    return pd.concat([runs, extra], ignore_index=True)


def critical_rows(**fit) -> pd.DataFrame:
    row = dict(study="k", model="mlp", train_fraction=1.0, lr_rule="best", target_metric="train_loss", target_value=0.5,
               target_rule="fixed", target_batch_size=None, target_fallback=False, b_crit=40.0,
               s_min=100.0, ci_low=20.0, ci_high=80.0, n_points=3, fit_status="ok", b_crit_bound=None,
               b_simple=60.0, b_simple_ci_low=50.0, b_simple_ci_high=70.0, b_simple_n_runs=4,
               b_noise=30.0, b_noise_ci_low=np.nan, b_noise_ci_high=np.nan, b_noise_n_runs=1, b_noise_train_loss=0.5)
    return pd.DataFrame([{**row, **fit}])


def test_headline_target_prefers_train_loss_then_order_given():
    assert headline_target({"test_error": [0.2], "train_loss": [0.5, 0.1]}) == ("train_loss", "fixed", 0.5)
    assert headline_target({"test_error": [0.2]}) == ("test_error", "fixed", 0.2)
    assert headline_target({"train_loss": ["largest_batch_q25", 0.1]}) == ("train_loss", "largest_batch_q25", None)
    assert headline_target({}) is None


def test_summary_gives_health_best_batch_b_crit_and_sharpness_ratio():
    runs = runs_with_lrs()
    ratios = sharpness_ratios(runs, fake_sharpness(runs))
    table = summary_table(runs, critical_rows(), ratios, SETTINGS)
    row = table.iloc[0]
    assert (row["n_runs"], row["n_completed"], row["n_diverged"], row["n_stalled"]) == (9, 9, 0, 0)
    assert row["best_batch_size"] == 32 and row["best_test_acc"] == pytest.approx(0.918)
    assert row["best_batch_edge"] == "smallest"  # the grid is 32-400: the optimum may lie below it
    assert (row["b_crit"], row["b_crit_ci_low"], row["b_crit_ci_high"], row["b_simple"]) == (40, 20, 80, 60)
    assert row["sharpness_ratio"] == pytest.approx(np.exp(np.log([4.0, 5.0, 6.0]).mean()))
    shown = summary_display(table).iloc[0]
    assert shown["B_crit [95% interval]"] == "40 [20, 80]" and shown["B_simple at the target [95%]"] == "60 [50, 70]"
    assert shown["B_noise at the target [95%]"] == "30 (no interval)"
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
    assert b_crit_text(np.nan, 600.0, np.inf, "beyond_grid", ">600") == ">600 (still near-linear at the largest batch: no upper end)"
    assert b_crit_text(np.nan, 1.0, 5000.0, "interval_too_wide", None) == "– (interval wider than 100×)"
    assert b_crit_text(476.2, 372.0, 609.0, "ok", None) == "476 [372, 609]"
    table = summary_table(runs_with_lrs(), critical_rows(b_crit=np.nan, fit_status="beyond_grid", b_crit_bound=">400",
                                                         ci_low=400.0, ci_high=np.inf), pd.DataFrame(columns=["study", "model", "metric", "epsilon"]), SETTINGS)
    assert summary_display(table).iloc[0]["B_crit [95% interval]"] == ">400 (still near-linear at the largest batch: no upper end)"


def test_a_study_without_targets_says_so():
    table = summary_table(runs_with_lrs(), critical_rows().iloc[0:0], pd.DataFrame(columns=["study", "model", "metric", "epsilon"]),
                          {"k": {"speedup": {"targets": {}}}})
    shown = summary_display(table).iloc[0]
    assert shown["target"] == "none configured" and shown["B_crit [95% interval]"] == "–"


def small_png(path, height: float = 4) -> str:
    fig, ax = plt.subplots(figsize=(8, height))
    ax.plot([1, 2, 3])
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def test_a_sharpness_ratio_between_ends_at_different_losses_is_context_not_headline():
    runs = runs_with_lrs()
    runs = runs.assign(final_train_loss=np.where(runs["batch_size"] == 400, 1.1, 0.09))
    row = summary_display(summary_table(runs, critical_rows(), sharpness_ratios(runs, fake_sharpness(runs)),
                                        SETTINGS)).iloc[0]
    assert row["sharpness LB / SB [95%]"].startswith("context only, not a finding: 4.93 [")
    assert "SB ended at train loss 0.09, LB at 1.1" in row["sharpness LB / SB [95%]"]


def test_a_noise_prediction_far_from_b_crit_is_flagged():
    far = critical_rows(b_simple=4583.0, b_simple_ci_low=2169.0, b_simple_ci_high=9068.0, b_crit=82.0)
    row = summary_display(summary_table(runs_with_lrs(), far, pd.DataFrame(columns=["study", "model", "metric", "epsilon"]),
                                        SETTINGS)).iloc[0]
    assert row["B_simple at the target [95%]"] == "4583 [2169, 9068] — 55.9× B_crit, beyond the 10× the paper reports"
    assert "B_crit" not in summary_display(summary_table(runs_with_lrs(), critical_rows(), pd.DataFrame(
        columns=["study", "model", "metric", "epsilon"]), SETTINGS)).iloc[0]["B_simple at the target [95%]"]


def report_page(tmp_path, figures) -> str:
    runs = runs_with_lrs(extra_lr_status="stalled")
    ratios = sharpness_ratios(runs, fake_sharpness(runs))
    summary = summary_table(runs, critical_rows(), ratios, SETTINGS)
    config = {"studies": {"k": {"dataset": "mnist1d", "batch_sizes": [32, 128, 400],
                                "budget": {"epochs": 800, "stop": {"train_loss": 0.01}}}}}
    no_curves = pd.DataFrame(columns=list(SPEEDUP_COLUMNS))
    findings = findings_table(runs, no_curves, critical_rows(), ratios, config["studies"])
    page = build_report({"runs": runs, "critical": critical_rows(), "ratios": ratios, "findings": findings}, summary,
                        figures, config,
                        {"commit": "abc123", "dirty": True}, {"torch": "2.14.1"})
    path = tmp_path / "report.html"
    path.write_text(page)
    return path


def test_report_page_holds_summary_tables_figures_and_provenance_in_a_browser(tmp_path):
    figures = [dict(name=f"fig{i}", section=s, png=small_png(tmp_path / f"fig{i}.png", height=4 + 12 * (s == "1")),
                    caption="A caption with ``code``.") for i, s in enumerate("123")]  # fig0 is taller than the window
    seen = render(report_page(tmp_path, figures))
    assert seen["console_errors"] == []
    assert seen["title"] == "batchlab report"
    text = seen["text"]
    # the report opens with the findings: every claim, the paper's value beside ours, a verdict
    assert text.index("Findings: did the papers' claims reproduce?") < text.index("\nSummary\n")
    for expected in ("Masters & Luschi 2018", "Keskar et al. 2017", "Golmant et al. 2018", "McCandlish et al. 2018",
                     "Shallue et al. 2018", "167× (F1)", "not measured: no study varies bn_batch_size"):
        assert expected in text, expected
    for expected in ("Summary", "40 [20, 80]", "60 [50, 70]", "Runs that did not train", "k/mlp/bs32/constant/lr1/seed0",
                     "ε-sharpness, full space (%)", "Provenance", "abc123", "uncommitted", "torch 2.14.1",
                     "cpu (x86_64, 1 threads)", "Trained to convergence (Keskar's protocol"):
        assert expected in text, expected
    assert [img["alt"] for img in seen["images"]] == ["fig0", "fig1", "fig2"]
    width, height = seen["viewport"]
    for img in seen["images"]:
        assert img["complete"] and img["natural_width"] > 0
        # at its own size when the page is wide enough, never shrunk to fit the window's height
        assert img["width"] <= width and img["width"] == pytest.approx(img["natural_width"])
    assert seen["zoomed_class"] == "whole"
    assert "Trained for equal epochs" not in text


def test_the_browser_check_catches_a_broken_figure(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(base64.b64decode(base64.b64encode(b"\x89PNG not really")))
    seen = render(report_page(tmp_path, [dict(name="broken", section="1", png=broken, caption="x")]))
    assert seen["images"][0]["natural_width"] == 0


# --- targets set by a rule, training fractions, and tasks other than classification ----------------


def test_a_rule_target_is_matched_by_its_rule_and_shows_the_models_own_value():
    from batchlab.report import critical_display

    q25 = critical_rows(target_rule="largest_batch_q25", target_value=0.123, target_batch_size=400, b_crit=90.0,
                        ci_low=60.0, ci_high=130.0)
    critical = pd.concat([critical_rows(), q25], ignore_index=True)
    ratios = pd.DataFrame(columns=["study", "model", "metric", "epsilon"])
    rule_first = summary_table(runs_with_lrs(), critical, ratios, {"k": {"speedup": {"targets": {"train_loss": ["largest_batch_q25", 0.5]}}}})
    shown = summary_display(rule_first).iloc[0]
    assert shown["target"] == "train loss ≤ 0.123 (lower quartile of the largest batch, per model)"
    assert shown["B_crit [95% interval]"] == "90 [60, 130]"
    fixed_first = summary_display(summary_table(runs_with_lrs(), critical, ratios, SETTINGS)).iloc[0]
    assert fixed_first["target"] == "train loss ≤ 0.5" and fixed_first["B_crit [95% interval]"] == "40 [20, 80]"
    # no fit for the rule yet: the rule is named without a value
    none = summary_table(runs_with_lrs(), critical_rows(), ratios, {"k": {"speedup": {"targets": {"train_loss": ["largest_batch_q25"]}}}})
    assert none.iloc[0]["target"] == "train loss ≤ lower quartile of the largest batch" and np.isnan(none.iloc[0]["b_crit"])
    assert list(critical_display(critical)["target"]) == [
        "train loss ≤ 0.5", "train loss ≤ 0.123 (lower quartile of the largest batch, per model)"]


def test_each_training_fraction_is_a_summary_row_with_its_own_b_crit():
    from batchlab.report import critical_display

    full = runs_with_lrs()
    half = full.assign(train_fraction=0.5, run_id=full["run_id"] + "/frac0.5", final_test_acc=full["final_test_acc"] - 0.1)
    runs = pd.concat([full, half], ignore_index=True)
    critical = pd.concat([critical_rows(), critical_rows(train_fraction=0.5, b_crit=25.0)], ignore_index=True)
    table = summary_table(runs, critical, pd.DataFrame(columns=["study", "model", "metric", "epsilon"]), SETTINGS)
    assert list(table["train_fraction"]) == [1.0, 0.5] and list(table["n_runs"]) == [9, 9]
    assert list(table["b_crit"]) == [40.0, 25.0] and table["best_test_acc"].tolist() == pytest.approx([0.918, 0.818])
    shown = summary_display(table)
    assert list(shown["model"]) == ["mlp (100% of the data)", "mlp (50% of the data)"]
    assert list(shown["B_crit [95% interval]"]) == ["40 [20, 80]", "25 [20, 80]"]
    assert list(critical_display(critical)["model"]) == ["mlp (100% of the data)", "mlp (50% of the data)"]
    assert list(summary_display(summary_table(full, critical_rows(), pd.DataFrame(columns=["study", "model", "metric",
                                                                                           "epsilon"]), SETTINGS))["model"]) == ["mlp"]


def task_runs(task: str) -> pd.DataFrame:
    """A study whose best batch by test accuracy (400) is its worst by the task's own measure (32 is best)."""
    runs = runs_with_lrs()
    b, seed = runs["batch_size"], runs["seed"]
    runs = runs.assign(task=task, final_test_acc=0.5 + b / 1000)
    if task == "language_model":
        return runs.assign(final_test_perplexity=(40 + b / 10) * (1 + 0.01 * seed))
    return runs.assign(final_test_miou=(0.7 - b / 2000) * (1 - 0.01 * seed))


@pytest.mark.parametrize("task, column, expected, text", [
    ("language_model", "best_test_perplexity", 43.2 * 1.01, "32 (constant, test perplexity 43.63); the smallest batch of the grid"),
    ("segmentation", "best_test_miou", 0.684 * 0.99, "32 (constant, test mean IoU 0.677); the smallest batch of the grid"),
])
def test_the_summary_judges_a_language_model_by_perplexity_and_a_segmentation_by_mean_iou(task, column, expected, text):
    from batchlab.report import unhealthy_display

    runs = task_runs(task)
    table = summary_table(runs, critical_rows(), pd.DataFrame(columns=["study", "model", "metric", "epsilon"]), SETTINGS)
    row = table.iloc[0]
    assert row["task"] == task and row["best_batch_size"] == 32 and row[column] == pytest.approx(expected)
    shown = summary_display(table)
    assert shown.iloc[0]["best batch size (rule, median test accuracy, perplexity or mean IoU)"] == text
    stalled = runs.assign(status=np.where(runs["batch_size"] == 400, "stalled", "completed"))
    bad = unhealthy_display(stalled)
    name = {"language_model": "final test perplexity", "segmentation": "final test mean IoU"}[task]
    assert len(bad) == 3 and name in bad.columns and bad[name].iloc[0] != "–"
    assert "final test perplexity" not in unhealthy_display(runs_with_lrs(extra_lr_status="stalled")).columns


def test_a_language_model_whose_seeds_mostly_fail_has_infinite_perplexity_and_loses():
    runs = task_runs("language_model")
    runs = runs.assign(status=np.where((runs["batch_size"] == 32) & (runs["seed"] > 0), "diverged", "completed"))
    row = summary_table(runs, critical_rows(), pd.DataFrame(columns=["study", "model", "metric", "epsilon"]), SETTINGS).iloc[0]
    assert row["best_batch_size"] == 128 and row["best_test_perplexity"] == pytest.approx(52.8 * 1.01)
    only_failures = runs.assign(status="diverged")
    row = summary_table(only_failures, critical_rows(), pd.DataFrame(columns=["study", "model", "metric", "epsilon"]),
                        SETTINGS).iloc[0]
    assert row["best_test_perplexity"] == np.inf


def test_the_critical_table_counts_tuned_lrs_at_a_grid_edge_and_says_why_larger_batches_failed():
    from batchlab.report import critical_display

    failed = critical_rows(b_crit=np.nan, fit_status="not_reached", not_reached_reason="budget")
    points = pd.DataFrame([dict(study="k", model="mlp", train_fraction=1.0, lr_rule="best", target_metric="train_loss",
                                target_rule="fixed", target_value=0.5, batch_size=b, reached=b < 400,
                                best_lr_edge=edge) for b, edge in ((32, "low"), (128, None), (400, None))])
    row = critical_display(failed, points).iloc[0]
    assert row["tuned LR at a grid edge (batch sizes)"] == "1 of 2"
    assert row["B_crit [95% interval]"] == "– (the larger batches did not reach the target: budget)"
    assert critical_display(failed).iloc[0]["tuned LR at a grid edge (batch sizes)"] == "–"


def test_a_prediction_below_ten_keeps_its_digits_rather_than_printing_zero():
    assert prediction_text(51.19, 0.0617, 42578.9) == "51 [0.062, 42579]"
    assert prediction_text(9.77, 0.636, 150.2) == "9.8 [0.64, 150]"
    assert prediction_text(24.4, 2.9, np.inf) == "24 [2.9, ∞)"
    assert prediction_text(229.8, np.nan, np.nan) == "230 (no interval)"


def test_the_provenance_writes_a_mapping_two_studies_share_under_each_without_yaml_anchors():
    from batchlab.report import provenance_html

    shared = {"epochs": 4, "stop": {"train_loss": 0.01}}  # as the schema's defaults or a YAML anchor leave them
    page = provenance_html({"studies": {"a": {"budget": shared}, "b": {"budget": shared}}}, {}, {}, [])
    assert "&amp;id" not in page and "*id" not in page
    assert page.count("epochs: 4") == 2 and page.count("train_loss: 0.01") == 2
