"""Stacked training against the plain PyTorch loop, side by side in one run.

For each model and batch size, on MNIST-1D-shaped data (CIFAR-shaped for resnet8, 35-token windows of a
5,000-word vocabulary for the LSTM language model), it times:
- the plain loop: TensorDataset + DataLoader + nn.Module + torch.optim + `.item()` every step; for the
  language model, the textbook loop of PyTorch's word_language_model example instead: its model
  (sequence-first nn.LSTM, the decoder's logits viewed as (T*B, V)), the hidden state carried from one
  window to the next and detached, gradients clipped at 0.25, the manual SGD update, `.item()` every step;
- batchlab's trainer (`train_stack`) with K = 1 (a single run: a stack of one) and K = 4, 12, 48
  runs of different seeds and LRs, everything included (model building, the evaluations at the
  first and last step, outputs), but no evaluation points or checkpoints in between, so that the
  figures show the training step;
and prints run-steps/s (updates of one run per second, summed over the stack), examples/s, and
the ratio to the plain loop. Each case runs `--repeats` times, interleaved with the others, and the
fastest counts (as `timeit` does: on a shared machine the slower ones measure the neighbours). Usage:

    .venv/bin/python benchmarks/stacked_training.py [--steps 300] [--threads 2] [--repeats 3] [--quick] [--models lstm_lm]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchlab.config import build_grid, check_config
from batchlab.data import Dataset
from batchlab.models import build_model
from batchlab.stacked.optim import build_optimizer
from batchlab.train.loop import train_stack

OPTIMIZER = {"name": "sgd", "momentum": 0.9}
LM_OPTIMIZER = {"name": "sgd", "momentum": 0.0, "max_grad_norm": 0.25}  # word_language_model's


VOCAB, BPTT = 5000, 35  # the language model's: a pydoc_text-sized vocabulary, word_language_model's window
LM_WINDOWS = (200, 20)  # train and test windows: the two full evaluations stay under a tenth of the time
DATASET = {"mlp": "mnist1d", "cnn": "mnist1d", "resnet8": "cifar10", "lstm_lm": "pydoc_text"}


def fake_data(model: str, n: int = 4000) -> Dataset:
    g = torch.Generator().manual_seed(0)
    if model == "lstm_lm":
        n, n_test = LM_WINDOWS
        stream = torch.randint(0, VOCAB, ((n + n_test) * BPTT + 1,), generator=g)
        windows = stream[:-1].view(-1, BPTT), stream[1:].view(-1, BPTT)  # next-token targets
        return Dataset("pydoc_text", windows[0][:n], windows[1][:n], windows[0][n:], windows[1][n:], VOCAB,
                       task="language_model")
    shape = (3, 32, 32) if model.startswith("resnet") else (40,)
    x = torch.randn(n + 500, *shape, generator=g)
    y = torch.randint(0, 10, (n + 500,), generator=g)
    return Dataset(DATASET[model], x[:n], y[:n], x[n:], y[n:], 10)


class TextbookLM(nn.Module):
    """word_language_model's RNNModel (LSTM, untied, no dropout, as batchlab's): sequence first."""

    def __init__(self, vocab: int, size: int = 200, layers: int = 2):
        super().__init__()
        self.encoder, self.decoder = nn.Embedding(vocab, size), nn.Linear(size, vocab)
        self.rnn = nn.LSTM(size, size, layers)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output).view(-1, self.decoder.out_features), hidden


def textbook_lm_loop(data: Dataset, batch_size: int, steps: int, lr: float = 20.0) -> float:
    """Seconds for `steps` updates of word_language_model's train(): batchify the stream into `batch_size`
    columns, take BPTT rows at a time, carry the hidden state."""
    torch.manual_seed(0)
    model = TextbookLM(data.num_classes)
    stream = data.x_train.reshape(-1)
    columns = stream[: len(stream) // batch_size * batch_size].view(batch_size, -1).t().contiguous()  # (L, B)
    hidden = None
    done, start = 0, time.perf_counter()
    while done < steps:
        for i in range(0, columns.size(0) - 1 - BPTT, BPTT):
            tokens, targets = columns[i : i + BPTT], columns[i + 1 : i + 1 + BPTT].reshape(-1)
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            model.zero_grad()
            output, hidden = model(tokens, hidden)
            loss = F.cross_entropy(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            loss.item()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def plain_loop(model_name: str, data: Dataset, batch_size: int, steps: int) -> float:
    """Seconds for `steps` updates of the textbook loop."""
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes)
    optimizer = build_optimizer(model.parameters(), {**OPTIMIZER, "nesterov": False, "weight_decay": 0.0}, 0.01)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True, drop_last=True)
    done, start = 0, time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def stack_specs(model: str, batch_size: int, k: int, steps: int, n_train: int) -> list:
    seeds = list(range(max(1, k // 4)))
    base_lrs = ([20.0, 10.0, 5.0, 40.0] if model == "lstm_lm" else [0.01, 0.02, 0.005, 0.03])[: min(k, 4)]
    study = {"dataset": DATASET[model], "models": [model],
             "batch_sizes": [batch_size], "lr_rules": ["constant"], "base_lrs": base_lrs, "seeds": seeds,
             "optimizer": LM_OPTIMIZER if model == "lstm_lm" else OPTIMIZER, "budget": {"steps": steps},
             "eval": {"regular_points": 1, "log_points": 0}, "checkpoints": {"log_points": 0}}
    cfg = check_config({"device": "cpu", "datasets": {"mnist1d": {"n_train": n_train}, "cifar10": {"root": "/none"}},
                        "studies": {"bench": study}})
    return list(build_grid(cfg).values())[:k]


def stacked(model: str, data: Dataset, batch_size: int, k: int, steps: int) -> float:
    specs = stack_specs(model, batch_size, k, steps, data.n_train)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_stack(specs, data, [f"{tmp}/{i}" for i in range(k)], device="cpu", progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mlp at batch 32 only, K = 1 and 12")
    parser.add_argument("--repeats", type=int, default=3, help="time each case this often and keep the fastest")
    parser.add_argument("--models", nargs="+", choices=sorted(DATASET), help="only these models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("batchlab").setLevel(logging.ERROR)  # short random-data runs stall; that is not news here
    cases = [("mlp", 32)] if args.quick else [(m, b) for m in ("mlp", "cnn") for b in (8, 32, 128)] + [
        ("resnet8", 8), ("resnet8", 32), ("lstm_lm", 20)]
    cases = [(m, b) for m, b in cases if args.models is None or m in args.models]
    ks = (1, 12) if args.quick else (1, 4, 12, 48)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps per run (resnet8: a fifth, K <= 4; "
          f"lstm_lm: half, K <= 12), fastest of {args.repeats}")
    print(f"{'model':8} {'batch':>5} {'how':>12} {'run-steps/s':>12} {'examples/s':>11} {'vs plain':>9}")
    for model, batch in cases:
        steps = {"resnet8": args.steps // 5, "lstm_lm": args.steps // 2}.get(model, args.steps)
        data = fake_data(model)
        plain = textbook_lm_loop if model == "lstm_lm" else lambda *a: plain_loop(model, *a)
        how = {"plain loop": lambda: plain(data, batch, steps)}
        most = {"resnet8": 4, "lstm_lm": 12}.get(model)  # larger ResNet and LSTM stacks take minutes on a CPU
        for k in [k for k in ks if most is None or k <= most]:
            how[f"stack K={k}"] = lambda k=k: stacked(model, data, batch, k, steps) / k
        times = {name: [] for name in how}
        for _ in range(args.repeats):  # interleaved, so that a busy spell on a shared machine slows every contender alike
            for name, run in how.items():
                times[name].append(run())
        seconds = {name: min(t) for name, t in times.items()}
        for name, s in seconds.items():
            rate = steps / s
            print(f"{model:8} {batch:5d} {name:>12} {rate:12.0f} {rate * batch:11.0f} {seconds['plain loop'] / s:9.2f}", flush=True)

if __name__ == "__main__":
    main()
