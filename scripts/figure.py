"""Figure rules: the tables named in the rule's input -> the figure named in params.figure."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

import pandas as pd  # noqa: E402

from batchlab.plots import draw_figure  # noqa: E402

tables = {name: pd.read_parquet(path) for name, path in snakemake.input.items()}
draw_figure(snakemake.params.figure, tables, snakemake.output.png, snakemake.output.pdf)
