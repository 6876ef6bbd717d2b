"""Rule report_summary: the report's summary table, as RST and Parquet."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

import pandas as pd  # noqa: E402

from batchlab import io  # noqa: E402
from batchlab.report import summary_rst, summary_table  # noqa: E402

table = summary_table(
    pd.read_parquet(snakemake.input.runs), pd.read_parquet(snakemake.input.sharpness),
    pd.read_parquet(snakemake.input.critical), snakemake.params.settings,
)
io.write_parquet(table, snakemake.output.table)
with io.atomic_path(snakemake.output.rst) as tmp:
    tmp.write_text(summary_rst(table))
