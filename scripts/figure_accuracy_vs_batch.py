"""Rule figure_accuracy_vs_batch."""
from batchlab.logs import log_to

log_to(snakemake.log[0])

import pandas as pd  # noqa: E402

from batchlab.plots import plot_accuracy_vs_batch  # noqa: E402

plot_accuracy_vs_batch(pd.read_parquet(snakemake.input.runs), snakemake.output.png, snakemake.output.pdf)
