"""Rule interpolate_study: each pair's healthy ends -> loss and accuracy along the line between them, one table."""
from batchlab.gpus import claim_job_gpu
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

# Before torch touches CUDA, which reads CUDA_VISIBLE_DEVICES only once; held until the job ends.
with claim_job_gpu(snakemake.config, snakemake.params.device):
    from pathlib import Path

    from batchlab import io
    from batchlab.analysis.interpolate import interpolate_run_pairs
    from batchlab.config import Pair, job_run_spec
    from batchlab.data import load_prepared
    from batchlab.devices import resolve_device

    pairs = []
    for fields, dirs, spec in zip(snakemake.params.pairs, snakemake.params.run_dirs, snakemake.params.specs):
        pair = Pair(**{**fields, "candidates": tuple(fields["candidates"])})
        pairs.append((pair, job_run_spec(spec, snakemake.config), {run_id: Path(d) for run_id, d in zip(pair.candidates, dirs)}))
    data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
    io.write_parquet(interpolate_run_pairs(pairs, data, snakemake.params.cfg), snakemake.output[0])
