"""The keskar preset's smoke run through every rule (the tests are in tests/smoke_preset.py)."""

import pytest

from tests.smoke_preset import smoke_run_fixture, test_a_smoke_variant_runs_every_rule_on_the_presets_models, \
    test_smoke_runs_record_the_task_metric, test_the_estimate_is_within_2x_of_the_smoke_runs_training_time  # noqa: F401

pytestmark = pytest.mark.workflow
smoke_run = smoke_run_fixture("keskar")
