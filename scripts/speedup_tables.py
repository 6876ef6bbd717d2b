"""Rule speedup_tables: runs + curves -> speedup.parquet, and critical_batch.parquet with the noise scale's
prediction read at each target from the analysed checkpoints."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.noise_prediction import attach_noise_predictions  # noqa: E402
from batchlab.speedup import speedup_tables  # noqa: E402

runs, curves = io.read_parquet(snakemake.input.runs), io.read_parquet(snakemake.input.curves)
speedup, critical = speedup_tables(runs, curves, snakemake.params.settings)
critical = attach_noise_predictions(critical, runs, curves, io.read_parquet(snakemake.input.sharpness))
io.write_parquet(speedup, snakemake.output.speedup)
io.write_parquet(critical, snakemake.output.critical)
