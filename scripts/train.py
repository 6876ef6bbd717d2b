"""Rule train_stack: the runs of one stack -> their run directories, then the stack's marker."""
from batchlab.gpus import claim_job_gpu
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

# Before torch touches CUDA, which reads CUDA_VISIBLE_DEVICES only once; held until the job ends.
with claim_job_gpu(snakemake.config, snakemake.params.device) as gpu:
    from batchlab import io
    from batchlab.config import job_run_spec
    from batchlab.train.loop import train_stack

    summaries = train_stack(
        [job_run_spec(spec, snakemake.config) for spec in snakemake.params.specs], snakemake.input.data, snakemake.params.run_dirs,
        device=snakemake.params.device, step_mode=snakemake.config["step_mode"],
        cudnn_benchmark=snakemake.config["cudnn_benchmark"],
    )
    runs = {s["run_id"]: {"status": s["status"], "steps": s["steps"]} for s in summaries}
    io.write_json({"gpu": gpu, "runs": runs}, snakemake.output[0])
