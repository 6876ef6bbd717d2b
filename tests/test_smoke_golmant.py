"""The golmant preset's smoke run through every rule (the tests are in tests/smoke_preset.py)."""

import pytest

from tests.smoke_preset import smoke_run_fixture, test_a_smoke_variant_runs_every_rule_on_the_presets_models, \
    test_smoke_runs_record_the_task_metric  # noqa: F401

pytestmark = pytest.mark.workflow
smoke_run = smoke_run_fixture("golmant")
