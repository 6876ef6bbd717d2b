"""How the device runs each update: eager, or a captured CUDA graph (batchlab.stacked.step).

The CUDA tests need a GPU and are skipped without one (CI has none); they were run on a lent
H200 (benchmarks/README.md, `step_modes.py`). Everything else runs here.
"""

import dataclasses

import pandas as pd
import pytest
import torch

from batchlab import io
from batchlab.config import ConfigError, check_config
from batchlab.stacked.models import build_stacked_model
from batchlab.stacked.optim import StackedOptimizer
from batchlab.stacked.step import GRAPH_WARMUP_STEPS, make_step, resolve_step_mode
from batchlab.train.loop import train_stack
from tests.conftest import TINY_CONFIG
from tests.test_stacked_train import CASES, signals, stack_specs
from tests.test_train import assert_same_results

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_captures_on_a_gpu_and_runs_eagerly_elsewhere():
    assert resolve_step_mode("auto", torch.device("cuda")) == "cuda_graph"
    assert resolve_step_mode("auto", torch.device("cpu")) == "eager"
    assert resolve_step_mode("eager", torch.device("cuda")) == "eager"
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        resolve_step_mode("cuda_graph", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown step_mode 'graph'"):
        resolve_step_mode("graph", torch.device("cpu"))


def test_the_config_takes_a_step_mode_and_refuses_others():
    checked = check_config({**TINY_CONFIG})
    assert checked["step_mode"] == "auto" and checked["cudnn_benchmark"] is True
    assert check_config({**TINY_CONFIG, "step_mode": "cuda_graph"})["step_mode"] == "cuda_graph"
    with pytest.raises(ConfigError, match="step_mode"):
        check_config({**TINY_CONFIG, "step_mode": "compile"})


def test_a_cuda_graph_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    data = signals()
    specs = stack_specs("mlp", data.n_train)[:2]
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        train_stack(specs, data, [tmp_path / "a", tmp_path / "b"], device="cpu", step_mode="cuda_graph")
    assert not any(tmp_path.iterdir())


# --- on a GPU ------------------------------------------------------------------------------


def on_cuda(data):
    return dataclasses.replace(data, x_train=data.x_train.cuda(), y_train=data.y_train.cuda(),
                               x_test=data.x_test.cuda(), y_test=data.y_test.cuda())


@cuda
@pytest.mark.parametrize("optimizer", [{"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
                                       {"name": "adam", "weight_decay": 1e-4}], ids=["sgd", "adam"])
def test_a_replayed_graph_updates_as_the_eager_step_with_each_steps_batch_and_lr(optimizer):
    cfg = check_config({**TINY_CONFIG, "studies": {"s": {**TINY_CONFIG["studies"]["tiny"], "optimizer": optimizer}}})
    opt_cfg = cfg["studies"]["s"]["optimizer"]
    dev = torch.device("cuda")
    models, steps = {}, {}
    for mode in ("eager", "cuda_graph"):
        models[mode] = build_stacked_model("resnet8", (3, 8, 8), 10, [0, 1, 2], device=dev, dtype=torch.float64)
        steps[mode] = make_step(models[mode], StackedOptimizer(models[mode].params, opt_cfg), mode)
    g = torch.Generator(device=dev).manual_seed(0)
    for i in range(GRAPH_WARMUP_STEPS + 6):
        xb = torch.randn(3, 4, 3, 8, 8, generator=g, device=dev, dtype=torch.float64)
        yb = torch.randint(0, 10, (3, 4), generator=g, device=dev)
        lr = torch.tensor([0.1, 0.01, 0.001], device=dev, dtype=torch.float64) / (1 + i)  # a new LR every step
        eager, graphed = (steps[mode](xb, yb, lr) for mode in ("eager", "cuda_graph"))
        torch.testing.assert_close(graphed, eager, rtol=1e-10, atol=0)
    for key, p in models["eager"].params.items():
        torch.testing.assert_close(models["cuda_graph"].params[key], p, rtol=1e-10, atol=1e-13, msg=key)
    for key, b in models["eager"].buffers.items():
        torch.testing.assert_close(models["cuda_graph"].buffers[key], b, rtol=1e-10, atol=1e-13, msg=key)
    assert steps["cuda_graph"].graph is not None  # the later steps were replays


@cuda
@pytest.mark.parametrize("case", [c for c in CASES if c != "lstm_lm-clipped"] + ["mlp-diverging"])
def test_a_stack_trained_with_a_cuda_graph_equals_the_eager_stack(case, tmp_path):
    c = CASES.get(case, dict(model="mlp", data=signals, base_lrs=(0.05, 1.0)))  # diverges after the capture
    torch.set_default_dtype(torch.float64)
    try:
        data = on_cuda(c["data"]())
        specs = stack_specs(c["model"], data.n_train, bn=c.get("bn"), dataset=c.get("dataset", "mnist1d"),
                            base_lrs=c.get("base_lrs", (0.05, 0.02)), optimizer=c.get("optimizer"))[::2]
        results = {}
        for mode in ("eager", "cuda_graph"):
            dirs = [tmp_path / mode / spec.run_id for spec in specs]
            # cuDNN's fixed heuristics, so that the step mode is all that differs
            summaries = train_stack(specs, data, dirs, device="cuda", progress=False, step_mode=mode,
                                    cudnn_benchmark=False)
            results[mode] = ([s["status"] for s in summaries], dirs)
    finally:
        torch.set_default_dtype(torch.float32)
    (eager_status, eager_dirs), (graph_status, graph_dirs) = results["eager"], results["cuda_graph"]
    assert graph_status == eager_status
    assert {io.read_json(d / "run.json")["step_mode"] for d in graph_dirs} == {"cuda_graph"}
    if case == "mlp-diverging":
        assert "diverged" in eager_status and len(set(eager_status)) > 1
    for a, b in zip(eager_dirs, graph_dirs):
        ea, eb = pd.read_parquet(a / "metrics.parquet"), pd.read_parquet(b / "metrics.parquet")
        pd.testing.assert_frame_equal(eb, ea, rtol=1e-9, atol=1e-12)


@cuda
def test_a_stack_replayed_from_a_graph_is_reproducible_bit_for_bit(tmp_path):
    data = on_cuda(signals())
    specs = stack_specs("mlp", data.n_train)[::2]
    dirs = {}
    for attempt in ("first", "second"):
        dirs[attempt] = [tmp_path / attempt / spec.run_id for spec in specs]
        train_stack(specs, data, dirs[attempt], device="cuda", progress=False, step_mode="cuda_graph",
                    cudnn_benchmark=False)
    for a, b in zip(dirs["first"], dirs["second"]):
        assert_same_results(a, b)


@cuda
def test_on_a_gpu_a_run_replays_a_graph_with_cudnn_timing_and_says_so(tmp_path):
    data = on_cuda(signals())
    spec = stack_specs("cnn", data.n_train)[0]
    torch.backends.cudnn.benchmark = False
    train_stack([spec], data, [tmp_path], device="cuda", progress=False)  # the defaults: auto, cudnn_benchmark
    info = io.read_json(tmp_path / "run.json")
    assert info["status"] != "diverged" and info["steps"] == spec.budget["steps"]
    assert info["step_mode"] == "cuda_graph" and info["cudnn_benchmark"] is True
