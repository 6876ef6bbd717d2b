"""Rule interpolate_pair: two final checkpoints -> loss and accuracy along the line between them."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from batchlab import io  # noqa: E402
from batchlab.analysis.interpolate import interpolate_run_pair  # noqa: E402
from batchlab.config import Pair, RunSpec  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.train import resolve_device  # noqa: E402

data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
table = interpolate_run_pair(
    Pair(**snakemake.params.pair), RunSpec.from_dict(snakemake.params.spec), snakemake.input.small,
    snakemake.input.large, data, snakemake.params.cfg,
)
io.write_parquet(table, snakemake.output[0])
