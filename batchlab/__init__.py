"""batchlab: how the SGD batch size shapes deep-learning training.

The library behind the Snakemake workflow: data, models, LR rules, the training loop,
and the tables and figures built from its runs. See ../README.md for the workflow.
"""

__version__ = "0.1.0"
