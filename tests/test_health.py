"""The pure health and convergence-budget verdicts, on synthetic evaluation histories."""

import math

import pytest

from batchlab.health import best_train_loss, chance_loss, has_plateaued, stall_reason, stop_reason

LN10 = math.log(10)
HEALTH = {"chance_fraction": 0.99, "min_improvement": 0.01}
NAN = float("nan")


def curve(train_losses: dict[int, float], train_accs: dict[int, float] | None = None) -> dict:
    """Evaluations {step: (train_loss, train_acc, test_loss, test_acc)} with the given train columns."""
    accs = train_accs or {}
    return {s: (loss, accs.get(s, 0.1), loss, 0.1) for s, loss in train_losses.items()}


def first_stop(evals: dict, steps_per_epoch: int, stop_cfg: dict) -> tuple[int, str] | None:
    """Replays the training loop: the first evaluation after step 0 at which the run would stop."""
    for step in sorted(evals)[1:]:
        reason = stop_reason({s: v for s, v in evals.items() if s <= step}, steps_per_epoch, stop_cfg)
        if reason is not None:
            return step, reason
    return None


# --- health --------------------------------------------------------------------------------

def test_chance_loss_is_ln_of_the_class_count():
    assert chance_loss(10) == pytest.approx(2.302585) and chance_loss(2) == pytest.approx(0.693147)


def test_a_run_that_ends_at_chance_is_stalled():
    # the demo's bs512 run: it dipped early, then ended at ln 10
    reason = stall_reason(curve({0: 2.31, 10: 1.9, 20: 2.3027}), 10, HEALTH)
    assert reason is not None and "chance" in reason and "2.303" in reason


def test_chance_level_is_a_fraction_of_ln_c_and_inclusive():
    at_threshold = 0.99 * LN10
    assert stall_reason(curve({0: 3.0, 5: at_threshold}), 10, HEALTH) is not None  # "at or above"
    assert stall_reason(curve({0: 3.0, 5: at_threshold - 1e-9}), 10, HEALTH) is None
    # ln(100) = 4.6: a loss of 3 is far above chance for 10 classes, well below it for 100
    assert stall_reason(curve({0: 4.7, 5: 3.0}), 10, HEALTH) is not None
    assert stall_reason(curve({0: 4.7, 5: 3.0}), 100, HEALTH) is None
    assert stall_reason(curve({0: 4.7, 5: 3.0}), 100, {**HEALTH, "chance_fraction": 0.6}) is not None


def test_a_run_that_never_improves_on_its_initial_loss_is_stalled():
    # below chance throughout (a good init), but only 0.5% better than step 0 at best
    reason = stall_reason(curve({0: 1.0, 5: 0.997, 10: 0.995}), 10, HEALTH)
    assert reason is not None and "never fell below" in reason
    assert stall_reason(curve({0: 1.0, 5: 0.98}), 10, HEALTH) is None
    # strictly below (1 - min_improvement) x initial: 0.5 exactly is not enough
    assert stall_reason(curve({0: 1.0, 5: 0.5}), 10, {**HEALTH, "min_improvement": 0.5}) is not None
    assert stall_reason(curve({0: 1.0, 5: 0.4999}), 10, {**HEALTH, "min_improvement": 0.5}) is None


def test_improvement_is_judged_on_the_best_loss_and_chance_on_the_final_one():
    # it reached 1.0 and drifted back up to 1.99: it did improve, and 1.99 is still below chance
    assert stall_reason(curve({0: 2.0, 5: 1.0, 10: 1.99}), 10, HEALTH) is None
    # the evaluations need not come in step order
    assert stall_reason({10: (1.99, 0, 0, 0), 0: (2.0, 0, 0, 0), 5: (1.0, 0, 0, 0)}, 10, HEALTH) is None


def test_health_of_non_finite_and_single_evaluations():
    assert stall_reason(curve({0: 2.3, 5: 1.0, 10: NAN}), 10, HEALTH) is not None  # a NaN end is no solution
    assert stall_reason(curve({0: 2.3, 5: NAN, 10: 1.0}), 10, HEALTH) is None  # a NaN on the way is ignored
    # without a finite initial loss only the chance test can be made
    assert stall_reason(curve({0: NAN, 10: 1.0}), 10, HEALTH) is None
    assert stall_reason(curve({0: NAN, 10: 2.3}), 10, HEALTH) is not None
    # one evaluation: nothing improved
    assert "never fell below" in stall_reason(curve({0: 1.0}), 10, HEALTH)
    assert "chance" in stall_reason(curve({0: 2.3}), 10, HEALTH)
    with pytest.raises(ValueError, match="no evaluation"):
        stall_reason({}, 10, HEALTH)
    with pytest.raises(ValueError, match="step 0"):
        stall_reason(curve({5: 1.0}), 10, HEALTH)


# --- convergence budget --------------------------------------------------------------------

def test_best_train_loss_skips_non_finite_and_later_steps():
    evals = curve({0: 2.3, 5: NAN, 10: 1.2, 15: float("inf"), 20: 0.9})
    assert best_train_loss(evals, 20) == 0.9
    assert best_train_loss(evals, 19) == 1.2 and best_train_loss(evals, 10) == 1.2
    assert best_train_loss(evals, 4) == 2.3
    assert math.isnan(best_train_loss(curve({0: NAN}), 0))


def test_no_stop_config_never_stops():
    evals = curve({0: 2.3, 10: 0.0001}, {10: 1.0})
    assert stop_reason(evals, 10, None) is None and stop_reason(evals, 10, {}) is None


def test_train_loss_target_stops_at_the_first_evaluation_at_or_below_it():
    evals = curve({0: 2.3, 10: 1.8, 20: 1.51, 30: 1.5, 40: 1.2})
    assert first_stop(evals, 10, {"train_loss": 1.5}) == (30, "train_loss")  # "at or below": 1.5 itself stops
    assert first_stop(evals, 10, {"train_loss": 1.0}) is None
    assert stop_reason(curve({0: 2.3, 10: NAN}), 10, {"train_loss": 1.5}) is None


def test_train_acc_target_and_the_order_of_criteria():
    evals = curve({0: 2.3, 10: 1.0, 20: 0.5}, {0: 0.1, 10: 0.6, 20: 0.95})
    assert first_stop(evals, 10, {"train_acc": 0.95}) == (20, "train_acc")
    assert first_stop(evals, 10, {"train_acc": 0.6}) == (10, "train_acc")
    # both met at once: the loss target is named
    assert stop_reason(evals, 10, {"train_loss": 0.5, "train_acc": 0.9}) == "train_loss"
    assert stop_reason(evals, 10, {"train_loss": 0.1, "train_acc": 0.9}) == "train_acc"


def test_plateau_stops_when_the_best_loss_stalls_for_plateau_epochs():
    steps_per_epoch, cfg = 10, {"plateau_epochs": 2, "plateau_min_delta": 0.01}
    # steady progress, then gains of ~0.1% per epoch from step 20 on
    evals = curve({0: 2.3, 5: 2.0, 10: 1.5, 20: 1.0, 30: 0.999, 40: 0.998, 50: 0.997})
    # at 30 the best (0.999) is far below the best up to step 10 (1.5); at 40, 0.998 > 0.99 x 1.0
    assert first_stop(evals, steps_per_epoch, cfg) == (40, "plateau")
    assert first_stop(evals, steps_per_epoch, {**cfg, "plateau_min_delta": 0.0005}) is None
    assert first_stop(evals, steps_per_epoch, {**cfg, "plateau_epochs": 3}) == (50, "plateau")


def test_plateau_waits_a_whole_window_and_reads_the_best_loss_not_the_last():
    cfg = {"plateau_epochs": 2, "plateau_min_delta": 0.01}
    flat = curve({0: 2.3, 1: 2.3, 10: 2.3, 19: 2.3, 20: 2.2999})
    assert first_stop(flat, 10, cfg) == (20, "plateau")  # not before 2 epochs, however flat
    # noisy: the last loss rose, but the best improved by 10% within the window
    noisy = curve({0: 2.3, 10: 1.0, 20: 0.9, 30: 1.4})
    assert stop_reason(noisy, 10, cfg) is None
    # a window that opens in the middle of an epoch: the best up to step 15 is 2.0 (step 10)
    assert has_plateaued(curve({0: 2.3, 10: 2.0, 35: 1.995}), 35, 20, 0.01)
    assert not has_plateaued(curve({0: 2.3, 10: 2.0, 35: 1.9}), 35, 20, 0.01)


def test_plateau_with_non_finite_and_single_evaluations():
    cfg = {"plateau_epochs": 1, "plateau_min_delta": 0.01}
    assert stop_reason(curve({0: 2.3}), 10, cfg) is None  # one evaluation: no window has passed
    assert stop_reason(curve({0: NAN, 10: 2.3}), 10, cfg) is None  # nothing finite to compare with
    assert stop_reason(curve({0: 2.3, 10: NAN}), 10, cfg) == "plateau"  # NaN is no improvement
    assert stop_reason(curve({0: 2.3, 5: NAN, 10: 2.0}), 10, cfg) is None
    with pytest.raises(ValueError, match="no evaluation"):
        stop_reason({}, 10, cfg)
