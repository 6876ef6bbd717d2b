"""Rule train_stack: the runs of one stack -> their run directories, then the stack's marker."""
from batchlab.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from batchlab import io  # noqa: E402
from batchlab.config import RunSpec  # noqa: E402
from batchlab.train import train_stack  # noqa: E402

summaries = train_stack(
    [RunSpec.from_dict(spec) for spec in snakemake.params.specs], snakemake.input.data, snakemake.params.run_dirs,
    device=snakemake.params.device,
)
io.write_json({s["run_id"]: {"status": s["status"], "steps": s["steps"]} for s in summaries}, snakemake.output[0])
