"""Rule report_summary: runs + critical batch + sharpness ratios -> summary.parquet."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.report import summary_table  # noqa: E402

table = summary_table(
    io.read_parquet(snakemake.input.runs), io.read_parquet(snakemake.input.critical),
    io.read_parquet(snakemake.input.ratios), snakemake.params.studies,
)
io.write_parquet(table, snakemake.output[0])
