"""Rule findings: runs + speed-up + critical batch + sharpness ratios -> findings.parquet (each paper's claims)."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io  # noqa: E402
from batchlab.findings import findings_table  # noqa: E402

table = findings_table(
    *(io.read_parquet(snakemake.input[name]) for name in ("runs", "speedup", "critical", "ratios")),
    snakemake.params.studies,
)
io.write_parquet(table, snakemake.output[0])
