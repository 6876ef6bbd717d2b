"""The schedule by LR rule: warm-up for some rules only, from a start factor, over a fraction of the run,
and the config checks that name the key."""

import pytest

from batchlab.config import ConfigError, check_config
from batchlab.lr_rules import lr_factor, schedule_factor, schedule_factors, warms_up, warmup_length
from tests.conftest import TINY_CONFIG, make_spec

NO_DECAY = {"warmup_steps": 0, "decay": "none", "decay_gamma": 0.1, "decay_milestones": [0.5, 0.75]}


def schedule(**keys) -> dict:
    return {**NO_DECAY, **keys}


def test_warmup_from_a_start_factor_rises_linearly_to_one():
    # Masters & Luschi: from eta / 32 at the first update to eta at the end of warm-up
    factors = [lr_factor(s, total_steps=100, warmup_steps=4, warmup_start=1 / 32) for s in range(6)]
    assert factors == [0.03125, 0.2734375, 0.515625, 0.7578125, 1.0, 1.0]  # 1/32 + (31/32) t / 4, exact in binary


def test_without_a_start_factor_the_warmup_is_todays():
    assert [lr_factor(s, 100, warmup_steps=4, warmup_start=None) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_warmup_as_a_fraction_of_the_run():
    assert warmup_length(schedule(warmup_fraction=0.05), 1000) == 50
    assert warmup_length(schedule(warmup_fraction=0.05), 10) == 1  # at least one update
    assert warmup_length(schedule(warmup_steps=7), 1000) == 7
    assert warmup_length(schedule(warmup_steps=7, warmup_fraction=None), 1000) == 7


def test_only_the_rules_listed_warm_up():
    linear_only = schedule(warmup_steps=4, warmup_rules=["linear"])
    assert warms_up(linear_only, "linear") and not warms_up(linear_only, "constant") and not warms_up(linear_only, "sqrt")
    assert [schedule_factor(s, 100, linear_only, "linear") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [schedule_factor(s, 100, linear_only, "constant") for s in range(5)] == [1.0] * 5
    assert [schedule_factor(s, 100, linear_only, "sqrt") for s in range(5)] == [1.0] * 5
    # every rule warms up without the key, as every config did before it
    assert all(warms_up(schedule(warmup_steps=4), rule) for rule in ("constant", "linear", "sqrt"))
    assert schedule_factor(0, 100, schedule(warmup_steps=4), "constant") == 0.25


def test_masters_luschi_warmup_then_step_decay():
    ml = schedule(warmup_fraction=0.05, warmup_start=0.03125, decay="step", warmup_rules=["linear"])
    factors = {s: schedule_factor(s, 1000, ml, "linear") for s in (0, 10, 49, 50, 524, 525, 762, 763, 999)}
    assert factors[0] == 0.03125 and factors[10] == 0.03125 + 0.96875 * 10 / 50
    assert factors[49] == 0.03125 + 0.96875 * 49 / 50 and factors[50] == 1.0
    # the decay runs over the 950 updates after warm-up: its milestones at 50 + 475 and 50 + 712.5
    assert (factors[524], factors[525]) == (1.0, 0.1)
    assert factors[762] == 0.1 and factors[763] == pytest.approx(0.01) and factors[999] == pytest.approx(0.01)
    # the cold rule has the plain step decay of the whole run
    cold, warm = schedule_factors(500, 1000, ml)
    assert (cold, warm) == (0.1, 1.0)


def test_a_checked_study_carries_the_defaults_of_todays_schedule():
    spec = make_spec()
    assert spec.schedule["warmup_rules"] == ["constant", "linear", "sqrt"]
    assert spec.schedule["warmup_fraction"] is None and spec.schedule["warmup_start"] is None


def checked(schedule_keys: dict, **study) -> dict:
    cfg = {**TINY_CONFIG, "studies": {"tiny": {**TINY_CONFIG["studies"]["tiny"], "schedule": schedule_keys, **study}}}
    return check_config(cfg)


def test_warmup_given_twice_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'studies\.tiny\.schedule\.warmup_fraction'.*not both"):
        checked({"warmup_steps": 3, "warmup_fraction": 0.05})


def test_a_warmup_fraction_as_long_as_the_shortest_run_is_refused():
    # batch 64 on 256 examples for 2 epochs: 8 steps; 0.95 of them rounds to 8
    with pytest.raises(ConfigError, match=r"'studies\.tiny\.schedule\.warmup_fraction': 8 warm-up steps.*only 8 steps"):
        checked({"warmup_fraction": 0.95})
    assert checked({"warmup_fraction": 0.5})["studies"]["tiny"]["schedule"]["warmup_fraction"] == 0.5


def test_the_warmup_length_is_checked_only_where_a_rule_of_the_study_warms_up():
    with pytest.raises(ConfigError, match=r"schedule\.warmup_steps"):
        checked({"warmup_steps": 8, "warmup_rules": ["linear"]})  # the tiny study has the linear rule
    checked({"warmup_steps": 8, "warmup_rules": ["sqrt"]})  # no run warms up: nothing to check


@pytest.mark.parametrize("keys, where", [
    ({"warmup_start": 0}, "warmup_start"), ({"warmup_start": 1.5}, "warmup_start"),
    ({"warmup_fraction": 1.0}, "warmup_fraction"), ({"warmup_rules": ["cubic"]}, "warmup_rules"),
])
def test_the_schema_refuses_bad_warmup_keys(keys, where):
    with pytest.raises(ConfigError, match=rf"studies\.tiny\.schedule\.{where}"):
        checked(keys)
