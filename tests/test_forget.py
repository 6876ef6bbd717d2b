"""Forgetting runs (batchlab.forget, `python -m batchlab forget`): what a damaged run file asks for."""

import pytest

from batchlab import io
from batchlab.__main__ import main
from batchlab.forget import forget, run_id_of

RUN = "s/mlp/bs16/constant/lr0.1/seed0"
OTHER = "s/mlp/bs16/constant/lr0.1/seed1"


def results_tree(root):
    """Two runs trained in one stack, a third in another; their markers as the train rule writes them."""
    results = root / "results"
    for run_id in (RUN, OTHER, "s/mlp/bs64/constant/lr0.1/seed0"):
        io.write_json({"run_id": run_id}, results / "runs" / run_id / "run.json")
    io.write_json({"gpu": None, "runs": {RUN: {}, OTHER: {}}}, results / "stacks/s/mlp/bs16/stack0.json")
    io.write_json({"gpu": None, "runs": {"s/mlp/bs64/constant/lr0.1/seed0": {}}}, results / "stacks/s/mlp/bs64/stack0.json")
    return results


def test_the_run_of_a_path_is_read_from_its_place_under_results_runs():
    assert run_id_of(f"/w/results/runs/{RUN}/checkpoints/step_4.pt") == RUN
    assert run_id_of(f"results/runs/{RUN}/run.json") == RUN
    grouped = "fm/keskar_f1/bs128/frac0.1/constant/lr0.001/seed0"  # a run id with a group part
    assert run_id_of(f"/w/results/runs/{grouped}/final.pt") == grouped
    assert run_id_of("/w/results/tables/runs.parquet") is None
    assert run_id_of("/w/results/stacks/s/mlp/bs16/stack0.json") is None


def test_forgetting_a_run_removes_its_directory_and_its_stacks_marker_only(tmp_path):
    results = results_tree(tmp_path)
    io.write_json({}, results / "tables/runs.parquet")  # stands in for the gathered table
    removed = forget(results, [RUN])
    assert removed == [results / "runs" / RUN, results / "stacks/s/mlp/bs16/stack0.json", results / "tables/runs.parquet"]
    assert (results / "runs" / OTHER / "run.json").exists()  # kept: the stack's job keeps its finished members
    assert (results / "stacks/s/mlp/bs64/stack0.json").exists()


def test_the_command_refuses_a_run_that_is_not_there_and_names_the_folder(tmp_path, capsys):
    results = results_tree(tmp_path)
    assert main(["forget", "s/mlp/bs16/constant/lr0.1/seed7", "--results", str(results)]) == 2
    assert f"no run s/mlp/bs16/constant/lr0.1/seed7 in {results}" in capsys.readouterr().err
    assert main(["forget", RUN, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"removed {results / 'runs' / RUN}" in out and "trains it again" in out
    assert not (results / "runs" / RUN).exists()


def test_a_damaged_file_of_a_run_names_the_command_that_forgets_it(tmp_path):
    path = tmp_path / "results/runs" / RUN / "checkpoints/step_4.pt"
    io.save_torch({"step": 4}, path)
    path.write_bytes(path.read_bytes().replace(b"step", b"stap"))
    with pytest.raises(OSError, match=f"python -m batchlab forget {RUN}"):
        io.load_torch(path)
