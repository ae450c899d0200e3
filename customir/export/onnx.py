"""Export stage: ``train/model`` → ``export/`` (``model.onnx`` + tokenizer), parity-checked.

The whole sentence-transformers pipeline (transformer, pooling, normalization) is traced into one
graph with ``torch.onnx.export``, so the server needs onnxruntime and a tokenizer only. (optimum
and ``sentence-transformers[onnx]`` are avoided on purpose: they downgrade transformers and
break sentence-transformers 6.) The parity check encodes sample chunks with both the torch model
and the served ONNX encoder and fails below ``min_cosine``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from customir.config import ExportConfig
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.models import load_sentence_transformer
from customir.schemas import CHUNKS, read_table
from customir.serve.encoder import EXPORT_CONFIG, OnnxEncoder

STAGE = "export"


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch model's embeddings."""


def export_onnx(model_dir: Path, out_dir: Path, opset: int) -> dict:
    """Trace ``model_dir`` into ``out_dir/model.onnx``; copy the tokenizer; return its metadata."""
    import torch

    model = load_sentence_transformer(model_dir).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, st):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = {"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": token_type_ids}
            return self.st(features)["sentence_embedding"]

    sample = model.tokenizer(["an example sentence", "another one, a little longer"],
                             padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in ("input_ids", "attention_mask", "token_type_ids"))
    dynamic = {"input_ids": {0: "batch", 1: "sequence"},
               "attention_mask": {0: "batch", 1: "sequence"},
               "token_type_ids": {0: "batch", 1: "sequence"},
               "sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(SentenceEmbedding(model), args, str(out_dir / "model.onnx"),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False)
    shutil.copy(Path(model_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    meta = {"dimension": model.get_embedding_dimension(),
            "max_seq_length": model.max_seq_length,
            "pad_id": model.tokenizer.pad_token_id or 0, "normalized": True,
            "source_model": str(model_dir)}
    (out_dir / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2))
    return meta


def parity(model_dir: Path, onnx_dir: Path, texts: list[str]) -> dict:
    """Compare torch and ONNX embeddings of ``texts``: min cosine and max absolute difference."""
    torch_emb = load_sentence_transformer(model_dir).encode(
        texts, normalize_embeddings=True, convert_to_numpy=True)
    onnx_emb = OnnxEncoder(onnx_dir).encode(texts)
    cos = np.sum(torch_emb * onnx_emb, axis=1) / (
        np.linalg.norm(torch_emb, axis=1) * np.linalg.norm(onnx_emb, axis=1))
    return {"n": len(texts), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(torch_emb - onnx_emb).max())}


def run(model_dir: str | Path, chunks_dir: str | Path, run_dir: str | Path,
        config: ExportConfig) -> Manifest:
    model_dir, chunks_dir = Path(model_dir), Path(chunks_dir)
    out = Path(run_dir) / "export"
    inputs = {"model": fingerprint(model_dir), "chunks": fingerprint(chunks_dir)}
    if done := find_complete(out, config.config_hash(), inputs):
        log("export: up to date, skipping")
        return done
    texts = read_table(chunks_dir, CHUNKS).column("text").to_pylist()[:config.parity_samples]
    texts += ["short query", "a longer question about the corpus that a user might type?"]
    with stage_output(out, STAGE, config.config_hash(), inputs) as (tmp, manifest):
        meta = export_onnx(model_dir, tmp, config.opset)
        check = parity(model_dir, tmp, texts)
        log(f"export: parity min cosine {check['min_cosine']:.6f}, "
            f"max |diff| {check['max_abs_diff']:.2e} on {check['n']} texts")
        if check["min_cosine"] < config.min_cosine:
            raise ParityError(f"ONNX parity failed: min cosine {check['min_cosine']:.6f} < "
                              f"{config.min_cosine}")
        manifest.balances["parity_texts"] = Balance(len(texts), check["n"])
        manifest.extra.update({"parity": check, "model": meta})
    return manifest
