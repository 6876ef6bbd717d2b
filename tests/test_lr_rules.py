import math

import pytest

from batchlab.lr_rules import lr_factor, scaled_lr


@pytest.mark.parametrize(
    "rule, expected",
    [("constant", 0.1), ("linear", 0.4), ("sqrt", 0.2)],
)
def test_rules_scale_from_the_reference_batch(rule, expected):
    assert scaled_lr(rule, 0.1, batch_size=256, ref_batch_size=64) == pytest.approx(expected)


def test_rules_agree_at_the_reference_batch():
    assert {scaled_lr(r, 0.3, 64, 64) for r in ("constant", "linear", "sqrt")} == {0.3}


def test_masters_luschi_base_lr_is_linear_rule_from_batch_one():
    # eta = eta_tilde * m
    assert scaled_lr("linear", 0.002, batch_size=32, ref_batch_size=1) == pytest.approx(0.064)


def test_unknown_rule_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown lr_rule 'cubic'; choose one of constant, linear, sqrt"):
        scaled_lr("cubic", 0.1, 64, 64)


def test_non_positive_batch_is_refused():
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        scaled_lr("linear", 0.1, 0, 64)


def test_warmup_rises_linearly_to_one():
    factors = [lr_factor(s, total_steps=100, warmup_steps=4) for s in range(6)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_decay_runs_from_one_to_zero_after_warmup():
    assert lr_factor(10, 110, warmup_steps=10, decay="cosine") == pytest.approx(1.0)
    assert lr_factor(60, 110, warmup_steps=10, decay="cosine") == pytest.approx(0.5)
    assert lr_factor(110, 110, warmup_steps=10, decay="cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(35, 110, warmup_steps=10, decay="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_linear_and_step_decay():
    assert lr_factor(50, 100, decay="linear") == pytest.approx(0.5)
    assert [lr_factor(s, 100, decay="step", decay_gamma=0.1, decay_milestones=(0.5, 0.75)) for s in (49, 50, 75)] == pytest.approx(
        [1.0, 0.1, 0.01]
    )


def test_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="unknown decay 'exp'"):
        lr_factor(0, 10, decay="exp")
