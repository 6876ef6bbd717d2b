"""The masters_luschi preset's smoke run through every rule (the checks are in tests/smoke_preset.py)."""

import pytest

from tests import smoke_preset

pytestmark = pytest.mark.workflow
smoke_run = smoke_preset.smoke_run_fixture("masters_luschi")


def test_a_smoke_variant_runs_every_rule_on_the_presets_models(smoke_run):
    smoke_preset.check_every_rule_ran_on_the_presets_models(smoke_run)


def test_smoke_runs_record_the_task_metric(smoke_run):
    smoke_preset.check_the_runs_record_the_task_metric(smoke_run)
