"""Every checkpoint, final.pt and Parquet table carries a checksum of its content, checked on load."""

import copy
import json
import logging
import struct
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from batchlab import io
from batchlab.tables import curves_table, runs_table
from batchlab.train.loop import train_run
from batchlab.train.plan import make_plan
from tests.conftest import make_spec
from tests.test_train import RUN, assert_same_results


def tensors(obj):
    """Every tensor in a nest of dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors(value)


def change_a_weight(path):
    """Rewrite a torch file with one weight changed and all else, any checksum included, as it was."""
    raw = torch.load(path, weights_only=True)
    weight = max((t for t in tensors(raw) if t.is_floating_point()), key=torch.Tensor.numel)
    weight.view(-1)[weight.numel() // 2] += 1.0
    torch.save(raw, path)


def flip_a_data_byte(path):
    """Flip one byte in the middle of the largest tensor's record: torch itself reads the file without a complaint."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[record.header_offset + 26 : record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len  # after the record's local header
    raw[start + record.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


CONTENT = {
    "model": {"w": torch.randn(3, 4), "half": torch.ones(2, dtype=torch.bfloat16), "mask": torch.tensor([True, False]),
              "scalar": torch.tensor(3.5, dtype=torch.float64), "view": torch.arange(10.0)[::3]},
    "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}, 1: {"step": torch.tensor(4.0)}},
                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "nesterov": False, "foreach": None, "params": [0, 1]}]},
    "step": 21, "run_id": "a/b", "wall_time_s": float("nan"),
}


def test_a_torch_file_gives_back_what_was_saved(tmp_path):
    io.save_torch(CONTENT, tmp_path / "c.pt")
    back = io.load_torch(tmp_path / "c.pt")
    assert back.keys() == CONTENT.keys() and back["optimizer"]["param_groups"] == CONTENT["optimizer"]["param_groups"]
    for got, want in zip(tensors(back), tensors(CONTENT)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert io.content_digest(back) == io.content_digest(CONTENT)


@pytest.mark.parametrize("damage", [change_a_weight, flip_a_data_byte])
def test_a_changed_torch_file_still_loads_with_torch_but_is_refused(tmp_path, damage):
    path = tmp_path / "final.pt"
    io.save_torch(CONTENT, path)
    damage(path)
    torch.load(path, weights_only=True)  # the damage is invisible to torch
    with pytest.raises(io.ChecksumError, match=f"{path} is damaged or was edited"):
        io.load_torch(path)


def test_a_torch_file_without_a_checksum_is_refused(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "old.pt")
    with pytest.raises(io.ChecksumError, match="old.pt has no batchlab checksum"):
        io.load_torch(tmp_path / "old.pt")


def test_the_digest_sees_types_order_free_keys_and_every_tensor_byte():
    digest = io.content_digest
    assert digest({"a": 1, "b": 2.0}) == digest({"b": 2.0, "a": 1})
    assert len({digest(v) for v in (1, 1.0, True, "1", [1], (1,), None, torch.tensor(1), torch.tensor([1]))}) == 9
    x = torch.zeros(1000, dtype=torch.float64)
    y = x.clone()
    y.view(torch.uint8)[4321] = 1  # one bit of one element
    assert digest(x) != digest(y) and digest(x) == digest(x.clone())


@pytest.mark.parametrize("damage", [change_a_weight, flip_a_data_byte])
def test_a_damaged_newest_checkpoint_is_refused_with_a_warning_and_resume_falls_back(tmp_path, tiny_data_path, caplog,
                                                                                     damage):
    spec = make_spec({"budget": {"epochs": 3}, "schedule": {"decay": "cosine", "warmup_steps": 5}}, run=RUN)
    train_run(spec, tiny_data_path, tmp_path / "whole", device="cpu", progress=False)
    train_run(spec, tiny_data_path, tmp_path / "split", device="cpu", progress=False, max_steps=21)  # between evals
    newest = tmp_path / "split/checkpoints/resume.pt"
    assert io.load_torch(newest)["step"] == 21
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="batchlab.train"):
        resumed = train_run(spec, tiny_data_path, tmp_path / "split", device="cpu", progress=False)
    assert any(r.levelno == logging.WARNING and str(newest) in r.getMessage() for r in caplog.records)
    previous = max(s for s in make_plan(spec, 256).checkpoint_steps if s < 21)
    assert previous > 0 and resumed["resumed_from_step"] == previous
    assert_same_results(tmp_path / "whole", tmp_path / "split")


def test_an_analysis_refuses_a_damaged_checkpoint_or_curve(tmp_path, tiny_data):
    from batchlab.analysis.measure import analyse_run
    from batchlab.config import check_config
    from tests.conftest import TINY_CONFIG

    spec = make_spec(run=RUN)
    cfg = check_config(copy.deepcopy(TINY_CONFIG))["studies"]["tiny"]["analysis"]
    train_run(spec, tiny_data, tmp_path, device="cpu", progress=False)
    flip_a_data_byte(tmp_path / "final.pt")
    with pytest.raises(io.ChecksumError, match=str(tmp_path / "final.pt")):
        analyse_run(tmp_path, spec, tiny_data, cfg, along_training=False)
    pd.read_parquet(tmp_path / "metrics.parquet").to_parquet(tmp_path / "metrics.parquet")  # the same values, unchecked
    with pytest.raises(io.ChecksumError, match=str(tmp_path / "metrics.parquet")):
        analyse_run(tmp_path, spec, tiny_data, cfg, along_training=True)


# --- Parquet ------------------------------------------------------------------------------------

COLUMNS = {  # every kind of column our tables hold
    "float_nan": pd.Series([0.5, np.nan, -0.0]),
    "int": pd.Series([1, 2, 3]),
    "nullable_int": pd.Series([1, None, 3], dtype="Int64"),
    "string": pd.Series(["a", None, "c"]),
    "object_strings": pd.Series(["a", "b", None], dtype=object),
    "bool": pd.Series([True, False, True]),
    "object_bools": pd.Series([True, False, True], dtype=object),
    "category": pd.Series(["x", "y", "x"], dtype="category"),
    "all_none": pd.Series([None, None, None], dtype=object),
    "float32": pd.Series([1.5, np.nan, 2.0], dtype=np.float32),
}


@pytest.mark.parametrize("kind", COLUMNS)
def test_a_parquet_table_reads_back_as_pandas_reads_it(tmp_path, kind):
    df = pd.DataFrame({kind: COLUMNS[kind], "x": [1.0, 2.0, 3.0]})
    for frame in (df, df.iloc[0:0]):
        io.write_parquet(frame, tmp_path / "t.parquet")
        pd.testing.assert_frame_equal(io.read_parquet(tmp_path / "t.parquet"), pd.read_parquet(tmp_path / "t.parquet"))
    assert io.read_parquet(tmp_path / "t.parquet", ["x"]).columns.tolist() == ["x"]


def test_gathered_tables_read_back(tmp_path, tiny_data_path):
    train_run(make_spec(run=RUN), tiny_data_path, tmp_path / "run", device="cpu", progress=False)
    for table in (runs_table([tmp_path / "run/run.json"]),
                  curves_table([tmp_path / "run/run.json"], [tmp_path / "run/metrics.parquet"])):
        io.write_parquet(table, tmp_path / "t.parquet")
        pd.testing.assert_frame_equal(io.read_parquet(tmp_path / "t.parquet"), table)


def test_a_value_changed_in_a_runs_metrics_is_found_when_the_tables_are_gathered(tmp_path, tiny_data_path):
    run_dir = tmp_path / "tiny/mlp/bs16/constant/lr0.05/seed0"
    train_run(make_spec(run=RUN), tiny_data_path, run_dir, device="cpu", progress=False)
    summaries, metrics = [run_dir / "run.json"], [run_dir / "metrics.parquet"]
    assert len(curves_table(summaries, metrics)) == 33  # steps 0 to 32
    edited = pd.read_parquet(metrics[0])
    edited.loc[5, "batch_loss"] += 0.01
    edited.to_parquet(metrics[0], index=False)
    with pytest.raises(io.ChecksumError, match=f"{metrics[0]} has no batchlab checksum.*the rule that wrote it runs again"):
        curves_table(summaries, metrics)


def test_a_parquet_file_whose_values_no_longer_match_its_checksum_is_refused(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "metrics.parquet"
    io.write_parquet(pd.DataFrame({"step": [0, 1], "loss": [2.3, 2.2]}), path)
    table = pq.read_table(path)  # its checksum kept, one value changed
    pq.write_table(table.set_column(1, "loss", [[2.3, 2.1]]), path)
    with pytest.raises(io.ChecksumError, match=f"{path} is damaged or was edited.*Delete it"):
        io.read_parquet(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(OSError, match=f"cannot read {path}"):
        io.read_parquet(path)


def test_an_edited_run_json_is_refused_naming_the_file_and_the_command_that_retrains_the_run(tmp_path, tiny_data_path):
    run_id = "tiny/mlp/bs16/constant/lr0.05/seed0"
    summary = tmp_path / "results/runs" / run_id / "run.json"
    train_run(make_spec(run=run_id), tiny_data_path, summary.parent, device="cpu", progress=False)
    assert runs_table([summary])["final_test_acc"].notna().all()
    content = json.loads(summary.read_text())  # its checksum kept, one number changed
    summary.write_text(json.dumps({**content, "final_test_acc": 0.99}))
    with pytest.raises(io.ChecksumError, match=(f"{summary} is damaged or was edited.*"
                                                f"`python -m batchlab forget {run_id}`")):
        runs_table([summary])
    summary.write_text(summary.read_text().replace('"batchlab_sha256"', '"no_sha256"'))
    with pytest.raises(io.ChecksumError, match=f"{summary} has no batchlab checksum"):
        io.read_json(summary)


def test_a_checkpoint_write_that_fails_for_want_of_space_names_the_file_and_the_cause(tmp_path):
    """A file-size limit makes torch's own writer fail part-way, as a full disk does; the file system's free space
    is read as nearly none."""
    import subprocess
    import sys

    path = tmp_path / "checkpoints" / "step_8.pt"
    script = f"""
import resource, signal, shutil, sys, torch
from batchlab import io
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
io.shutil.disk_usage = lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6)
try:
    io.save_torch({{"model": torch.ones(10**6)}}, {str(path)!r})
except OSError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    message = result.stdout.strip()
    assert message == f"[Errno 28] cannot write {path}: no space left on its file system (1 MiB free); free some space and run again", result.stderr
    assert not list(path.parent.glob("*"))  # no half file left, under any name
