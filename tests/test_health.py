"""The pure health and convergence-budget verdicts, on synthetic evaluation histories."""

import math

import numpy as np
import pytest
import torch

from batchlab.data import IGNORE_INDEX
from batchlab.health import best_train_loss, chance_loss, has_plateaued, prior_entropy, stall_reason, stop_reason
from batchlab.metrics import member_sums

LN10 = math.log(10)
LN100 = math.log(100)
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
    reason = stall_reason(curve({0: 2.31, 10: 1.9, 20: 2.3027}), LN10, HEALTH)
    assert reason is not None and "chance" in reason and "2.303" in reason


def test_chance_level_is_a_fraction_of_the_prior_entropy_and_inclusive():
    at_threshold = 0.99 * LN10
    assert stall_reason(curve({0: 3.0, 5: at_threshold}), LN10, HEALTH) is not None  # "at or above"
    assert stall_reason(curve({0: 3.0, 5: at_threshold - 1e-9}), LN10, HEALTH) is None
    # ln(100) = 4.6: a loss of 3 is far above chance for 10 balanced classes, well below it for 100
    assert stall_reason(curve({0: 4.7, 5: 3.0}), LN10, HEALTH) is not None
    assert stall_reason(curve({0: 4.7, 5: 3.0}), LN100, HEALTH) is None
    assert stall_reason(curve({0: 4.7, 5: 3.0}), LN100, {**HEALTH, "chance_fraction": 0.6}) is not None


def test_a_run_that_never_improves_on_its_initial_loss_is_stalled():
    # below chance throughout (a good init), but only 0.5% better than step 0 at best
    reason = stall_reason(curve({0: 1.0, 5: 0.997, 10: 0.995}), LN10, HEALTH)
    assert reason is not None and "never fell below" in reason
    assert stall_reason(curve({0: 1.0, 5: 0.98}), LN10, HEALTH) is None
    # strictly below (1 - min_improvement) x initial: 0.5 exactly is not enough
    assert stall_reason(curve({0: 1.0, 5: 0.5}), LN10, {**HEALTH, "min_improvement": 0.5}) is not None
    assert stall_reason(curve({0: 1.0, 5: 0.4999}), LN10, {**HEALTH, "min_improvement": 0.5}) is None


def test_improvement_is_judged_on_the_best_loss_and_chance_on_the_final_one():
    # it reached 1.0 and drifted back up to 1.99: it did improve, and 1.99 is still below chance
    assert stall_reason(curve({0: 2.0, 5: 1.0, 10: 1.99}), LN10, HEALTH) is None
    # the evaluations need not come in step order
    assert stall_reason({10: (1.99, 0, 0, 0), 0: (2.0, 0, 0, 0), 5: (1.0, 0, 0, 0)}, LN10, HEALTH) is None


def test_health_of_non_finite_and_single_evaluations():
    assert stall_reason(curve({0: 2.3, 5: 1.0, 10: NAN}), LN10, HEALTH) is not None  # a NaN end is no solution
    assert stall_reason(curve({0: 2.3, 5: NAN, 10: 1.0}), LN10, HEALTH) is None  # a NaN on the way is ignored
    # without a finite initial loss only the chance test can be made
    assert stall_reason(curve({0: NAN, 10: 1.0}), LN10, HEALTH) is None
    assert stall_reason(curve({0: NAN, 10: 2.3}), LN10, HEALTH) is not None
    # one evaluation: nothing improved
    assert "never fell below" in stall_reason(curve({0: 1.0}), LN10, HEALTH)
    assert "chance" in stall_reason(curve({0: 2.3}), LN10, HEALTH)
    with pytest.raises(ValueError, match="no evaluation"):
        stall_reason({}, LN10, HEALTH)
    with pytest.raises(ValueError, match="step 0"):
        stall_reason(curve({5: 1.0}), LN10, HEALTH)


# --- chance level: the entropy of the training targets' prior ---------------------------------

def prior_loss(targets: torch.Tensor, num_classes: int) -> float:
    """The mean cross-entropy per counted target, as evaluation measures it, of a model that
    predicts the targets' empirical class frequencies everywhere, whatever its input."""
    valid = targets[targets != IGNORE_INDEX]
    freq = torch.bincount(valid, minlength=num_classes).double() / valid.numel()
    positions = targets.shape[1:]
    logits = freq.clamp_min(1e-300).log().view(num_classes, *[1] * len(positions))
    logits = logits.expand(len(targets), num_classes, *positions)[None]  # (K=1, N, C, *positions)
    loss, _, count = member_sums(logits, targets[None])
    return float(loss[0] / count[0])


def test_balanced_labels_have_the_prior_entropy_ln_c():
    labels = np.tile(np.arange(10), 50)  # 50 of each class
    assert prior_entropy(labels, 10) == pytest.approx(LN10, abs=1e-12) == pytest.approx(chance_loss(10))
    assert prior_entropy(torch.from_numpy(labels), 10) == pytest.approx(LN10, abs=1e-12)  # a tensor does too
    # the prior is of the classes that occur: two balanced classes out of 10 give ln 2
    assert prior_entropy(np.array([3, 7] * 20), 10) == pytest.approx(math.log(2))
    assert prior_entropy(np.zeros(7, dtype=np.int64), 10) == 0.0  # one class: nothing to guess


def test_a_segmentation_that_predicts_its_background_prior_is_stalled_far_below_ln_c():
    # VOC-like masks: 21 classes, 90% of the labelled pixels background, the rest spread over the
    # 20 object classes, and a void border that the loss ignores
    rng = np.random.default_rng(0)
    masks = np.where(rng.random((40, 16, 16)) < 0.9, 0, rng.integers(1, 21, (40, 16, 16)))
    masks[:, 0, :] = IGNORE_INDEX
    targets = torch.from_numpy(masks)
    h = prior_entropy(targets, 21, ignore_index=IGNORE_INDEX)
    assert h == pytest.approx(prior_loss(targets, 21), rel=1e-9)  # the loss of predicting the prior
    assert 0.4 < h < 0.25 * math.log(21)  # about 0.63 against ln 21 = 3.04
    # a run that learned the background prior and nothing more: stalled, though far below ln 21
    learned_prior = curve({0: math.log(21), 100: 0.5 * math.log(21), 200: h * 1.001})
    assert stall_reason(learned_prior, math.log(21), HEALTH) is None  # what ln C would have said
    reason = stall_reason(learned_prior, h, HEALTH)
    assert reason is not None and "chance" in reason and f"{h:.4g}" in reason and "prior" in reason
    # one that learned something beyond it is healthy
    assert stall_reason(curve({0: math.log(21), 200: 0.9 * h}), h, HEALTH) is None


def test_a_language_model_that_predicts_the_unigram_prior_is_stalled():
    # a Zipfian token stream over a vocabulary of 2000 (frequency of rank r ~ 1/r), cut into
    # next-token windows (N, T) as batchlab.data.text does
    vocab = 2000
    zipf = 1 / np.arange(1, vocab + 1)
    rng = np.random.default_rng(1)
    stream = rng.choice(vocab, size=64 * 35, p=zipf / zipf.sum())
    targets = torch.from_numpy(stream.reshape(64, 35))
    h = prior_entropy(targets, vocab, ignore_index=IGNORE_INDEX)
    assert h == pytest.approx(prior_loss(targets, vocab), rel=1e-9)
    assert h < 0.85 * math.log(vocab)  # the unigram entropy: far below ln 2000 = 7.6
    at_unigram = curve({0: math.log(vocab), 500: 1.0005 * h})
    assert stall_reason(at_unigram, math.log(vocab), HEALTH) is None
    assert "chance" in stall_reason(at_unigram, h, HEALTH)
    assert stall_reason(curve({0: math.log(vocab), 500: 0.95 * h}), h, HEALTH) is None


def test_the_prior_ignores_the_ignore_index_and_refuses_other_ids():
    labelled = np.array([0, 0, 0, 1])
    with_void = np.array([[0, IGNORE_INDEX, 0], [IGNORE_INDEX, 0, 1]])
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert prior_entropy(labelled, 2) == pytest.approx(expected)
    assert prior_entropy(with_void, 2, ignore_index=IGNORE_INDEX) == pytest.approx(expected)
    assert prior_entropy(torch.from_numpy(with_void), 2, ignore_index=IGNORE_INDEX) == pytest.approx(expected)
    with pytest.raises(ValueError, match="class ids"):  # not ignored, -100 is no class
        prior_entropy(with_void, 2)
    with pytest.raises(ValueError, match="class ids"):
        prior_entropy(np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="not defined"):
        prior_entropy(np.full(5, IGNORE_INDEX), 2, ignore_index=IGNORE_INDEX)


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
