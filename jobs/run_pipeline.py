"""Entry point for `ray job submit`: load a config, run the pipeline on the cluster it runs in.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml \
        -- python jobs/run_pipeline.py examples/gpu-cluster.yaml

Inside a Ray job RAY_ADDRESS is set, so every stage joins that cluster instead of starting one.
"""

import sys

from customir.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:], "--no-serve-check"]))
