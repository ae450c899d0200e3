"""DeepSpeed for the train stage (``train.deepspeed_stage``): the ZeRO config handed to the
Hugging Face trainer, and the check that DeepSpeed is installed before any work starts."""

from __future__ import annotations

from customir.config import TrainConfig

DEEPSPEED_INSTALL = "pip install 'customir[deepspeed]'"


def deepspeed_config(stage: int) -> dict:
    """ZeRO at ``stage``; sizes, clipping and precision follow the Hugging Face arguments."""
    return {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}


def require_deepspeed(config: TrainConfig) -> None:
    """Fail before any work when DeepSpeed is asked for but missing (inside the Ray workers it
    would surface as a worker traceback)."""
    import importlib.util

    if config.deepspeed_stage is not None and importlib.util.find_spec("deepspeed") is None:
        raise ImportError(f"train.deepspeed_stage needs DeepSpeed: {DEEPSPEED_INSTALL}")
