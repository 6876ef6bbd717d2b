"""Rule analyse_stack: the checkpoints of a stack's analysed runs -> their sharpness rows, one table."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from batchlab import io  # noqa: E402
from batchlab.analysis.measure import analyse_runs  # noqa: E402
from batchlab.config import RunSpec  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.train import resolve_device  # noqa: E402

data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
runs = [(run_dir, RunSpec.from_dict(spec), along) for run_dir, spec, along
        in zip(snakemake.params.run_dirs, snakemake.params.specs, snakemake.params.along_training)]
io.write_parquet(analyse_runs(runs, data, snakemake.params.cfg), snakemake.output[0])
