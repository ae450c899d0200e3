"""The Ray Serve application builder behind ``import_path`` in a RayService / `serve deploy` config.

Ray Serve imports ``customir.serve.deployment:app_builder`` and calls it with the config's
``args`` (validated as :class:`DeploymentArgs`); it returns the same bound application that
``customir serve`` runs (:func:`customir.serve.app.build_app`)::

    applications:
      - name: customir
        import_path: customir.serve.deployment:app_builder
        route_prefix: /
        args:
          model_dir: /models/adapt-1/export
          serve: {backend: onnx, min_replicas: 1, max_replicas: 4, target_ongoing_requests: 4}

Building the application loads nothing; the replicas load the encoder when they start.
"""

import os
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["DeploymentArgs", "app_builder"]


class DeploymentArgs(BaseModel):
    """The ``args`` of the Serve application (``model_dir`` may come from the environment)."""

    model_dir: str | None = Field(
        None, description="Export folder (or run folder) to serve; default: $CUSTOMIR_MODEL_DIR.")
    serve: dict[str, Any] = Field(
        default_factory=dict, description="Fields of customir's ServeConfig (the `serve:` "
        "section of a run config): backend, min/max_replicas, target_ongoing_requests, ...")


def app_builder(args: DeploymentArgs):
    """Ray Serve application builder: ``args`` → bound ``EmbeddingServer`` deployment."""
    from customir.config import ServeConfig
    from customir.serve.app import build_app, resolve_model_dir
    from customir.serve.lifecycle import api_key

    model_dir = args.model_dir or os.environ.get("CUSTOMIR_MODEL_DIR")
    if not model_dir:
        raise ValueError("set args.model_dir in the Serve config or CUSTOMIR_MODEL_DIR")
    config = ServeConfig.model_validate(args.serve)
    return build_app(resolve_model_dir(model_dir, config.backend), config, api_key(config))
