"""No stale or silently damaged result: settings that cannot change results, old checkpoints, unreadable files, leftovers."""

import pytest
import torch

from batchlab import io
from batchlab.train.loop import train_run
from tests.conftest import make_spec


def test_changing_the_resume_interval_does_not_retrain_a_finished_run(tmp_path, tiny_data_path):
    spec = make_spec()
    first = train_run(spec, tiny_data_path, tmp_path / "run", device="cpu", progress=False)
    spec.checkpoints = {**spec.checkpoints, "resume_every_s": 5.0}
    again = train_run(spec, tiny_data_path, tmp_path / "run", device="cpu", progress=False)
    assert again == first  # kept as it was (a retrained run has another wall time and finish time)


def test_checkpoints_of_an_earlier_config_are_never_kept_as_this_runs(tmp_path, tiny_data_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    io.save_torch({"config_hash": "another config", "step": 999}, ckpt / "step_999.pt")
    (ckpt / ".step_3.pt.abc.tmp").write_bytes(b"half a file")  # left by a killed job
    (tmp_path / "run" / ".metrics.parquet.xyz.tmp").write_bytes(b"half a file")
    train_run(make_spec(), tiny_data_path, tmp_path / "run", device="cpu", progress=False)
    assert not (ckpt / "step_999.pt").exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))
    steps = {int(p.stem.removeprefix("step_")) for p in ckpt.glob("step_*.pt")}
    assert steps and max(steps) < 999


def test_an_unreadable_checkpoint_names_its_path(tmp_path):
    path = tmp_path / "final.pt"
    io.save_torch({"model": {"w": torch.ones(3)}}, path)
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(OSError, match=str(path)):
        io.load_torch(path)
