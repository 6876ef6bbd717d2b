"""Rule gather_tables: every run -> runs.parquet and curves.parquet."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.tables import curves_table, runs_table  # noqa: E402

io.write_parquet(runs_table(snakemake.params.summaries), snakemake.output.runs)
io.write_parquet(curves_table(snakemake.params.summaries, snakemake.params.metrics), snakemake.output.curves)
