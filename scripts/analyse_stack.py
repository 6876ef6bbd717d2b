"""Rule analyse_stack: the checkpoints of a stack's analysed runs -> their sharpness rows, one table."""
from batchlab.gpus import claim_job_gpu
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

# Before torch touches CUDA, which reads CUDA_VISIBLE_DEVICES only once; held until the job ends.
with claim_job_gpu(snakemake.config, snakemake.params.device):
    from batchlab import io
    from batchlab.analysis.measure import analyse_runs
    from batchlab.config import job_run_spec
    from batchlab.data import load_prepared
    from batchlab.devices import resolve_device

    data = load_prepared(snakemake.input.data, resolve_device(snakemake.params.device))
    runs = [(run_dir, job_run_spec(spec, snakemake.config), along) for run_dir, spec, along
            in zip(snakemake.params.run_dirs, snakemake.params.specs, snakemake.params.along_training)]
    io.write_parquet(analyse_runs(runs, data, snakemake.params.cfg), snakemake.output[0])
