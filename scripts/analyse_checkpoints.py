"""Rule analyse_checkpoints: a run's checkpoints -> its sharpness rows."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from pathlib import Path  # noqa: E402

from batchlab import io  # noqa: E402
from batchlab.analysis.measure import analyse_run  # noqa: E402
from batchlab.config import RunSpec  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.train import resolve_device  # noqa: E402

data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
table = analyse_run(
    Path(snakemake.params.run_dir), RunSpec.from_dict(snakemake.params.spec), data, snakemake.params.cfg,
    along_training=snakemake.params.along_training,
)
io.write_parquet(table, snakemake.output[0])
