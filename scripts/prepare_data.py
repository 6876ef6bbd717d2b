"""Rule prepare_data: write results/data/<dataset>.npz."""
from batchlab.logs import log_to

log_to(snakemake.log[0])

from batchlab.data.prepare import prepare_dataset  # noqa: E402

prepare_dataset(snakemake.wildcards.dataset, snakemake.output[0], snakemake.params.options)
