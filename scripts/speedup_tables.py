"""Rule speedup_tables: runs + curves (+ noise scales) -> speedup.parquet and critical_batch.parquet."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.speedup import speedup_tables  # noqa: E402

speedup, critical = speedup_tables(
    io.read_parquet(snakemake.input.runs), io.read_parquet(snakemake.input.curves), snakemake.params.settings,
    sharpness=io.read_parquet(snakemake.input.sharpness),
)
io.write_parquet(speedup, snakemake.output.speedup)
io.write_parquet(critical, snakemake.output.critical)
