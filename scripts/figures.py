"""Rules figures_<section>: the tables -> the section's figures, each drawn from the tables params.tables names for it."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.plots import draw_figure  # noqa: E402

tables = {name: io.read_parquet(path) for name, path in snakemake.input.items()}
for (figure, names), png, pdf in zip(snakemake.params.tables.items(), snakemake.output.png, snakemake.output.pdf):
    draw_figure(figure, {name: tables[name] for name in names}, png, pdf)
