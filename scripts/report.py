"""Rule report: the tables, figures and captions -> results/report.html."""
from batchlab.logs import start_job

start_job(snakemake.log[0], 1)

from batchlab import io, provenance  # noqa: E402
from batchlab.report import build_report  # noqa: E402

tables = {name: io.read_parquet(snakemake.input[name]) for name in ("runs", "speedup", "critical", "ratios", "findings")}
figures = [{**meta, "png": png, "caption": snakemake.params.captions[meta["name"]]}
           for meta, png in zip(snakemake.params.figures, snakemake.input.figures)]
page = build_report(tables, io.read_parquet(snakemake.input.summary), figures, snakemake.params.config,
                    provenance.git_commit(), provenance.versions())
with io.atomic_path(snakemake.output[0]) as tmp:
    tmp.write_text(page)
