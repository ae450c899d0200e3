"""customir: turn your own documents into a domain-adapted embedding model, without labels.

The package import is light on purpose (no torch, ray, llama_cpp or onnxruntime): stages import
their heavy libraries inside the functions that need them.
"""

__version__ = "0.1.0"

from customir.config import PipelineConfig, load_config  # noqa: E402

__all__ = ["PipelineConfig", "__version__", "load_config", "run_pipeline"]


def run_pipeline(config: PipelineConfig, *, serve_check: bool = True) -> dict:
    """Run every stage for ``config`` (see :mod:`customir.pipeline`)."""
    from customir.pipeline import run_pipeline as _run

    return _run(config, serve_check=serve_check)
