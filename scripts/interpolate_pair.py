"""Rule interpolate_pair: the pair's healthy ends -> loss and accuracy along the line between them."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from pathlib import Path  # noqa: E402

from batchlab import io  # noqa: E402
from batchlab.analysis.interpolate import interpolate_run_pair  # noqa: E402
from batchlab.config import Pair, RunSpec  # noqa: E402
from batchlab.data import load_prepared  # noqa: E402
from batchlab.train import resolve_device  # noqa: E402

pair = Pair(**{**snakemake.params.pair, "candidates": tuple(snakemake.params.pair["candidates"])})
run_dirs = {run_id: Path(d) for run_id, d in zip(pair.candidates, snakemake.params.run_dirs)}
data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
table = interpolate_run_pair(pair, RunSpec.from_dict(snakemake.params.spec), run_dirs, data, snakemake.params.cfg)
io.write_parquet(table, snakemake.output[0])
