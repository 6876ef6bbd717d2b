"""Training: the runs of one stack (one model and batch size; LR rules, base LRs and seeds apart)
trained together, each into its own run directory. A single run is a stack of one.

Its rooms:
    loop        train_stack and train_run: the training loop
    stack       the runs trained together (Stack), which runs may share a stack, their batches
    plan        a run's steps, its evaluation and checkpoint steps (make_plan), its data order
    evaluation  loss, accuracy and mean IoU over a split (evaluate, evaluate_stack)
    curve       a run's curve on the host (Curve), where it diverged, whether it stalled
    run_files   a run's directory: finished or resumable, its checkpoints, its outputs
    resume      resume checkpoints as often as their cost allows, and stopping on SIGTERM (Interrupted)
"""

from batchlab.train.evaluation import evaluate, evaluate_stack
from batchlab.train.loop import train_run, train_stack
from batchlab.train.plan import make_plan
from batchlab.train.resume import Interrupted

__all__ = ["Interrupted", "evaluate", "evaluate_stack", "make_plan", "train_run", "train_stack"]
