"""Rule train: one grid point -> its run directory."""
from batchlab.logs import log_to

log_to(snakemake.log[0])

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from batchlab.config import RunSpec  # noqa: E402
from batchlab.train import train_run  # noqa: E402

torch.set_num_threads(snakemake.threads)
train_run(
    RunSpec.from_dict(snakemake.params.spec),
    snakemake.input.data,
    Path(snakemake.output.summary).parent,
    device=snakemake.params.device,
)
