"""The TensorRT path on a CUDA GPU: export MiniLM, build the fp16 engine
(:mod:`customir.export.tensorrt`) and check it embeds like the fp32 ONNX graph it was built from.

Marked ``gpu``; on a machine without a CUDA GPU or without the ``tensorrt`` wheel (the ``gpu``
extra) each test skips with the reason, so the default ``make test`` passes on CPU. Select these
alone with ``pytest -m gpu``.
"""

import importlib.util

import numpy as np
import pytest

from customir.config import EncoderBackend, ExportConfig
from customir.serve.encoder import load_encoder

from conftest import export_one_document

pytestmark = pytest.mark.gpu

MAX_BATCH = 16
TEXTS = ([f"question {i}: what does insulin do to blood glucose?" for i in range(20)]
         + ["short", "The pancreas secretes insulin, which lowers blood glucose after meals. "
            * 20])  # one text past max_seq_length: truncated the same way by both


def _cuda_and_tensorrt() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs TensorRT: pip install 'customir[gpu]'")


@pytest.fixture(scope="module")
def exported_with_engine(tmp_path_factory):
    _cuda_and_tensorrt()
    run = tmp_path_factory.mktemp("gpu")
    manifest = export_one_document(run, ExportConfig(int8=False, tensorrt=True,
                                                     tensorrt_max_batch=MAX_BATCH))
    return run / "export", manifest


def test_tensorrt_engine_embeds_like_the_onnx_graph(exported_with_engine):
    export, manifest = exported_with_engine
    assert (export / "model.plan").is_file()
    assert manifest.extra["tensorrt"]["fp16"] is True
    assert manifest.extra["tensorrt"]["max_batch"] == MAX_BATCH
    engine = load_encoder(export, EncoderBackend.tensorrt)
    assert engine.session.max_batch == MAX_BATCH
    # batch 32 > the profile's 16: the encoder must split, not fail
    trt = engine.encode(TEXTS, batch_size=32)
    reference = load_encoder(export, EncoderBackend.onnx).encode(TEXTS)
    assert trt.shape == reference.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(trt, axis=1), 1.0, atol=1e-3)
    cosines = np.sum(trt * reference, axis=1)  # both L2-normalised
    assert cosines.min() >= 0.9999, cosines
    # and each text keeps its own row (a shuffled batch would still have high cosines overall)
    assert list(np.argmax(trt @ reference.T, axis=1)) == list(range(len(TEXTS)))
