"""Rules gather_sharpness and gather_interpolation: stack per-job tables into one."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.tables import concat_tables  # noqa: E402

io.write_parquet(concat_tables(snakemake.input, snakemake.params.table), snakemake.output[0])
