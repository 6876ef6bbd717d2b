"""Rule prepare_data: write results/data/<dataset>.npz."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab.data.prepare import prepare_dataset  # noqa: E402

prepare_dataset(snakemake.wildcards.dataset, snakemake.output[0], snakemake.params.options)
