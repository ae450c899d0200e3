"""The ONNX encoder: tokenizer (`tokenizers`) + onnxruntime, no torch. Used by serve and by the
export stage's parity check, so what is checked is exactly what is served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EXPORT_CONFIG = "customir_onnx.json"


class OnnxEncoder:
    """Encode texts with an exported model folder (``model.onnx``, ``tokenizer.json``,
    ``customir_onnx.json``). Embeddings are L2-normalized, as the torch model's are."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "model.onnx").is_file():
            raise FileNotFoundError(f"{model_dir} has no model.onnx (run `customir export` first)")
        self.meta = json.loads((model_dir / EXPORT_CONFIG).read_text())
        self.dimension = int(self.meta["dimension"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.meta["max_seq_length"])
        self.tokenizer.enable_padding(pad_id=self.meta.get("pad_id", 0))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {k: v for k, v in feeds.items() if k in self._inputs}

    def count_tokens(self, texts: list[str]) -> int:
        return sum(sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts))

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            feeds = self.tokenize(texts[start:start + batch_size])
            out.append(self.session.run(["sentence_embedding"], feeds)[0])
        return np.concatenate(out).astype(np.float32)
