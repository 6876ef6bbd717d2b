"""Rule train: one grid point -> its run directory."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from pathlib import Path  # noqa: E402

from batchlab.config import RunSpec  # noqa: E402
from batchlab.train import train_run  # noqa: E402

train_run(
    RunSpec.from_dict(snakemake.params.spec),
    snakemake.input.data,
    Path(snakemake.output.summary).parent,
    device=snakemake.params.device,
)
