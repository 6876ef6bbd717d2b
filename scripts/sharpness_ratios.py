"""Rule sharpness_ratios: runs + sharpness -> Keskar's LB / SB ratios with their intervals."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.sharpness_ratio import sharpness_ratios  # noqa: E402

ratios = sharpness_ratios(io.read_parquet(snakemake.input.runs), io.read_parquet(snakemake.input.sharpness))
io.write_parquet(ratios, snakemake.output[0])
