"""Encoders behind the server: onnxruntime (fp32 or int8), torch, TensorRT — one interface.

The ONNX encoder is also what the export stage's parity and int8 checks run, so what is checked
is exactly what is served. Every encoder returns L2-normalized float32 vectors and truncates
input to the model's ``max_seq_length`` tokens; ``count_tokens`` reports what was embedded, and
``encode_counted`` returns both (the server's path: one tokenization, in its encoding thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from customir.config import EncoderBackend

EXPORT_CONFIG = "customir_onnx.json"
MODEL_FILES = {EncoderBackend.onnx: "model.onnx", EncoderBackend.onnx_int8: "model.int8.onnx",
               EncoderBackend.tensorrt: "model.plan"}
# A batch may hold this many padded tokens per real one: measured on MiniLM/onnxruntime (2 cores)
# with sample-corpus sentences, where the cost of a batch is about its padded token count.
PADDING_ALLOWANCE = 1.25


class _Tokenized:
    """Tokenization shared by the graph-based encoders (the `tokenizers` library; no torch)."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        if not (model_dir / EXPORT_CONFIG).is_file():
            raise FileNotFoundError(f"{model_dir} is not an export folder (no {EXPORT_CONFIG}); "
                                    "run `customir export` first")
        self.meta = json.loads((model_dir / EXPORT_CONFIG).read_text())
        self.dimension = int(self.meta["dimension"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.meta["max_seq_length"])
        self.tokenizer.no_padding()  # batches are padded by `_feeds`, after sorting by length
        self.pad_id = int(self.meta.get("pad_id", 0))

    def count_tokens(self, texts: list[str]) -> int:
        return sum(sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts))

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` (order kept). Texts are tokenized once, sorted by length and run in
        batches of similar length, so short texts are not padded to the longest one (on a CPU
        the padding costs as much as real tokens)."""
        return self.encode_counted(texts, batch_size)[0]

    def encode_counted(self, texts: list[str],
                       batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """:meth:`encode`, and the tokens embedded per text (what :meth:`count_tokens` sums),
        from the one tokenization."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        encodings = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for batch in length_batches([len(e.ids) for e in encodings], batch_size):
            out[batch] = self._run(_feeds([encodings[i] for i in batch], self.pad_id))
        return out, [sum(e.attention_mask) for e in encodings]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _feeds(encodings, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Model inputs for tokenizer encodings, padded to the longest of them."""
    width = max(len(e.ids) for e in encodings)
    feeds = {name: np.zeros((len(encodings), width), dtype=np.int64)
             for name in ("input_ids", "attention_mask", "token_type_ids")}
    feeds["input_ids"][:] = pad_id
    for row, e in enumerate(encodings):
        n = len(e.ids)
        feeds["input_ids"][row, :n] = e.ids
        feeds["attention_mask"][row, :n] = e.attention_mask
        feeds["token_type_ids"][row, :n] = e.type_ids
    return feeds


def length_batches(lengths: list[int], batch_size: int,
                   max_padding: float = PADDING_ALLOWANCE) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` texts of similar length: sorted by
    length, a batch is closed when padding it to its longest text would exceed ``max_padding``
    times its real tokens.

    >>> length_batches([5, 50, 6, 52], batch_size=8)
    [[0, 2], [1, 3]]
    >>> length_batches([5, 6, 7], batch_size=2)
    [[0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # sorted ascending, so text i is the longest of the batch it would join
        if current and (len(current) == batch_size
                        or lengths[i] * (len(current) + 1) > max_padding * (real + lengths[i])):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


class OnnxEncoder(_Tokenized):
    """onnxruntime on ``model_dir/model_file`` (``model.onnx`` or ``model.int8.onnx``)."""

    def __init__(self, model_dir: str | Path, model_file: str = "model.onnx",
                 threads: int | None = None):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        if not (model_dir / model_file).is_file():
            raise FileNotFoundError(f"{model_dir} has no {model_file} (run `customir export` "
                                    "first; model.int8.onnx exists only if int8 was accepted)")
        super().__init__(model_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's threads otherwise spin after each run, taking the CPU that the HTTP
        # proxy and tokenizer need between batches on a small machine
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_dir / model_file), options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self._inputs}
        return self.session.run(["sentence_embedding"], feeds)[0]


class TensorRTEncoder(_Tokenized):
    def __init__(self, model_dir: str | Path):
        from customir.export.tensorrt import TensorRTSession

        model_dir = Path(model_dir)
        if not (model_dir / "model.plan").is_file():
            raise FileNotFoundError(f"{model_dir} has no model.plan; export with "
                                    "export.tensorrt: true on a GPU machine")
        super().__init__(model_dir)
        self.session = TensorRTSession(model_dir / "model.plan")

    def encode_counted(self, texts: list[str],
                       batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        # a serve.max_batch_size above the engine's profile would fail every large batch
        return super().encode_counted(texts, min(batch_size, self.session.max_batch))

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(feeds)


class TorchEncoder:
    """The sentence-transformers model itself (the reference implementation)."""

    def __init__(self, model_dir: str | Path):
        from customir.models import load_sentence_transformer

        model_dir = Path(model_dir)
        if (model_dir / EXPORT_CONFIG).is_file():  # an export folder: use the model it came from
            model_dir = Path(json.loads((model_dir / EXPORT_CONFIG).read_text())["source_model"])
        self.model = load_sentence_transformer(model_dir)
        self.dimension = self.model.get_embedding_dimension()
        self._tokenizer = self.model.tokenizer

    def count_tokens(self, texts: list[str]) -> int:
        return sum(self._tokens_per_text(texts))

    def _tokens_per_text(self, texts: list[str]) -> list[int]:
        encoded = self._tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True).astype(np.float32)

    def encode_counted(self, texts: list[str],
                       batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """:meth:`encode` and the tokens embedded per text (the reference path: tokenized
        twice)."""
        return self.encode(texts, batch_size), self._tokens_per_text(texts)


def load_encoder(model_dir: str | Path, backend: EncoderBackend = EncoderBackend.onnx,
                 threads: int | None = None):
    """The encoder for ``backend`` over an export folder (or, for torch, a model folder)."""
    backend = EncoderBackend(backend)
    if backend == EncoderBackend.torch:
        return TorchEncoder(model_dir)
    if backend == EncoderBackend.tensorrt:
        return TensorRTEncoder(model_dir)
    return OnnxEncoder(model_dir, MODEL_FILES[backend], threads=threads)
