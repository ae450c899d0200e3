"""TensorRT: an fp16 engine built from the exported ONNX graph (CUDA GPUs only).

``tensorrt`` is part of the ``gpu`` extra and imported only here, inside the functions; on a
machine without it (or without a GPU) the error says what to install. The engine has one
optimization profile covering batch 1..``max_batch`` and sequence 1..``max_seq_length``.

Status: written against the TensorRT 10/11 Python API (explicit batch, named I/O tensors,
``execute_async_v3``); not yet run on a GPU in this project — see the serving issue's note.
"""

from __future__ import annotations

from pathlib import Path

INSTALL = ("TensorRT needs the gpu extra and a CUDA GPU: pip install 'customir[gpu]' "
           "(tensorrt is a CUDA-only wheel)")


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError(INSTALL) from None
    return trt


def build_engine(onnx_path: Path, plan_path: Path, max_batch: int, max_seq_length: int,
                 fp16: bool = True) -> dict:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path``; return its settings."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, (1, 1), (max(1, max_batch // 2), min(128, max_seq_length)),
                          (max_batch, max_seq_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    Path(plan_path).write_bytes(bytes(serialized))
    return {"fp16": fp16, "max_batch": max_batch, "max_seq_length": max_seq_length,
            "tensorrt": trt.__version__}


class TensorRTSession:
    """Runs an engine on CUDA with torch tensors as I/O buffers: ``run(feeds) -> embeddings``."""

    def __init__(self, plan_path: Path):
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA GPU; use backend onnx on CPU")
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # the graph's inputs (an input the model ignores may have been dropped from it)
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        # the largest batch the optimization profile admits (export.tensorrt_max_batch)
        self.max_batch = min(int(self.engine.get_tensor_profile_shape(n, 0)[2][0])
                             for n in self.inputs)

    def run(self, feeds: dict) -> "object":
        torch = self._torch
        # copies in, the engine and the output on one stream, so the engine never reads
        # inputs still being copied on another
        with torch.cuda.stream(self.stream):
            inputs = {k: torch.from_numpy(v).to("cuda", torch.int64) for k, v in feeds.items()
                      if k in self.inputs}
            batch = next(iter(inputs.values())).shape[0]
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            output = torch.empty((batch, self.engine.get_tensor_shape("sentence_embedding")[-1]),
                                 dtype=torch.float32, device="cuda")
            self.context.set_tensor_address("sentence_embedding", output.data_ptr())
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return output.cpu().numpy()
