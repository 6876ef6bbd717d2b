"""Rule figure_training_curves."""
from batchlab.logs import log_to

log_to(snakemake.log[0])

import pandas as pd  # noqa: E402

from batchlab.plots import plot_training_curves  # noqa: E402

plot_training_curves(
    pd.read_parquet(snakemake.input.runs), pd.read_parquet(snakemake.input.curves), snakemake.output.png, snakemake.output.pdf
)
