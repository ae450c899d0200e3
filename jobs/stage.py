"""Entry point for `ray job submit`: run one stage of the pipeline on the cluster it runs in.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml \
        -- python jobs/stage.py generate examples/gpu-cluster.yaml --set generate.max_llm_chunks=50

STAGE is one of customir.pipeline.STAGES. The stage reads the earlier stages' folders under the
config's ``run_dir`` (ingest reads ``corpus``) and writes its own there, as in a full run; it
skips itself when its output is already complete. A ``run_dir`` on ``s3://`` / ``gs://`` is
pulled into a local mirror before the stage and its output pushed after it
(customir/run_store.py). The last line printed is a one-line JSON summary:
``{"stage", "run_dir", "seconds", "counts"}``.
"""

import sys

from customir.cli import main
from customir.pipeline import STAGES

USAGE = (f"usage: python jobs/stage.py {{{','.join(STAGES)}}} CONFIG.yaml "
         "[--set SECTION.KEY=VALUE ...]")

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in STAGES:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    stage, *rest = sys.argv[1:]
    sys.exit(main(["run", *rest, "--only", stage]))
