"""`customir run|ingest|generate|mine|verify|train|evaluate|export|serve`.

``run CONFIG.yaml`` runs everything; each stage command runs one stage alone, taking its input
folder(s) as arguments and writing ``RUN_DIR/<stage output>``. Stage commands accept ``--config``
for settings and ``--set section.key=value`` to override one. Known errors print one line and
exit 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from customir import __version__


def _common(parser: argparse.ArgumentParser, config_required: bool = False) -> None:
    if not config_required:
        parser.add_argument("--config", help="YAML config with stage settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, "
                        "else a local cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="customir", description="Adapt an embedding model to your documents, without labels.")
    parser.add_argument("--version", action="version", version=f"customir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline from a config file")
    p.add_argument("config", help="YAML config (see examples/local.yaml)")
    # One stage alone neither serves nor checks the server: the flags exclude each other.
    whole_or_one = p.add_mutually_exclusive_group()
    whole_or_one.add_argument("--serve", action="store_true",
                              help="keep serving the model afterwards")
    whole_or_one.add_argument("--only", metavar="STAGE", help="run this one stage on the "
                              "config's run folder (its inputs are the earlier stages' folders "
                              "there) and print a one-line JSON summary; see jobs/stage.py")
    p.add_argument("--no-serve-check", action="store_true",
                   help="skip the final check that starts the server and embeds through it")
    _common(p, config_required=True)

    p = sub.add_parser("ingest", help="documents folder → RUN_DIR/chunks")
    p.add_argument("docs", help="folder of .txt .md .html .pdf .jsonl .parquet .eml files")
    p.add_argument("--out", required=True, help="run folder")
    _common(p)

    for name, help_ in (("generate", "RUN_DIR/chunks → RUN_DIR/queries"),
                        ("mine", "RUN_DIR/queries → RUN_DIR/candidates"),
                        ("verify", "RUN_DIR/candidates → RUN_DIR/triples"),
                        ("train", "RUN_DIR/triples → RUN_DIR/train/model")):
        p = sub.add_parser(name, help=help_)
        source = SOURCE_ARG[name]
        p.add_argument(source, help=f"the {source} stage folder")
        if name != "generate":
            p.add_argument("--chunks", required=True, help="the chunks stage folder")
        p.add_argument("--out", required=True, help="run folder")
        _common(p)

    p = sub.add_parser("evaluate", help="base vs tuned vs BM25 → RUN_DIR/evaluation")
    p.add_argument("train_dir", help="the train stage folder (model + split)")
    p.add_argument("--chunks", required=True)
    p.add_argument("--triples", required=True)
    p.add_argument("--out", required=True, help="run folder")
    _common(p)

    p = sub.add_parser("export", help="sentence-transformers folder → RUN_DIR/export (ONNX)")
    p.add_argument("model_dir")
    p.add_argument("--chunks", required=True, help="chunks folder (parity-check samples)")
    p.add_argument("--triples", help="triples folder: with --train, int8 is also checked on "
                   "the held-out test split")
    p.add_argument("--train", help="train stage folder (split)")
    p.add_argument("--out", required=True, help="run folder")
    _common(p)

    p = sub.add_parser("serve", help="serve a model at /v1/embeddings")
    p.add_argument("model", help="a run folder (local or s3://… / gs://…), its export folder, "
                   "or (backend torch) a sentence-transformers folder")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--backend", help="onnx (default), onnx-int8, torch or tensorrt")
    p.add_argument("--ingress", choices=("proxy", "haproxy"),
                   help="proxy (default: Ray Serve's HTTP proxy) or haproxy "
                   "(faster; needs the haproxy binary)")
    _common(p)
    return parser


def _load(args):
    from customir.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "ray_address", None):
        overrides.append(f"ray.address={args.ray_address}")
    return load_config(getattr(args, "config", None), overrides)


def _dispatch(args) -> int:
    cfg = _load(args)
    cmd = args.command
    if cmd == "run" and args.only:
        from customir.pipeline import run_stage

        manifest = run_stage(cfg, args.only)
        print(json.dumps({"stage": args.only, "run_dir": cfg.run_dir,
                          "seconds": manifest.seconds, "counts": _counts(manifest)}))
        return 0
    if cmd == "run":
        from customir.pipeline import run_pipeline

        from customir.run_store import RunStore

        summary = run_pipeline(cfg, serve_check=not args.no_serve_check)
        print(json.dumps(summary, indent=2))
        run = RunStore(cfg.run_dir, cfg.work_dir).local  # a remote run_dir's local mirror
        print((run / "evaluation" / "report.md").read_text())
        if args.serve:
            from customir.serve.lifecycle import serve_forever

            serve_forever(run / "export", cfg.serve, cfg.ray)
        return 0
    if cmd == "serve":
        from customir.serve.lifecycle import serve_forever

        from customir.config import ServeConfig, validated

        updates = {"host": args.host, "port": args.port, "backend": args.backend,
                   "ingress": args.ingress}
        serve_cfg = validated(ServeConfig, {**cfg.serve.model_dump(),
                                            **{k: v for k, v in updates.items() if v is not None}},
                              "serve")
        serve_forever(_local_model(args.model, cfg.work_dir), serve_cfg, cfg.ray)
        return 0
    _local_paths_only(args)
    out = Path(args.out)
    if cmd == "ingest":
        from customir.corpus import ingest
        manifest = ingest.run(args.docs, out, cfg.ingest, cfg.train)
    elif cmd == "generate":
        from customir.queries import generate
        manifest = generate.run(args.chunks, out, cfg.generate, cfg.ray)
    elif cmd == "mine":
        from customir.negatives import mine
        manifest = mine.run(args.queries, args.chunks, out, cfg.mine, cfg.ray)
    elif cmd == "verify":
        from customir.negatives import verify
        manifest = verify.run(args.candidates, args.chunks, out, cfg.verify, cfg.ray)
    elif cmd == "train":
        from customir.train import trainer
        manifest = trainer.run(args.triples, args.chunks, out, cfg.train, cfg.ray)
    elif cmd == "evaluate":
        from customir.evaluate import evaluate
        manifest = evaluate.run(args.chunks, args.triples, args.train_dir, out, cfg.evaluate,
                                cfg.train.base_model, cfg.mine, cfg.train.trust_remote_code)
    else:  # export
        from customir.export import onnx
        if bool(args.triples) != bool(args.train):
            raise ValueError("export: give --triples and --train together (or neither)")
        manifest = onnx.run(args.model_dir, args.chunks, out, cfg.export, args.triples,
                            args.train)
    if cmd == "evaluate":
        print((out / "evaluation" / "report.md").read_text())
    print(json.dumps({"stage": manifest.stage, "counts": _counts(manifest)}, indent=2))
    return 0


STAGE_PATH_ARGS = ("out", "docs", "chunks", "queries", "candidates", "triples", "train_dir",
                   "model_dir", "train")
# each stage command's positional argument (the others are --options)
SOURCE_ARG = {"ingest": "docs", "generate": "chunks", "mine": "queries", "verify": "candidates",
              "train": "triples", "evaluate": "train_dir", "export": "model_dir"}


def _local_paths_only(args) -> None:
    """A stage command reads and writes local folders; a URI would become a local folder named
    like ``s3:/bucket`` (``Path`` folds the ``//``), so it is refused up front."""
    for name in STAGE_PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and "://" in value:
            flag = name if SOURCE_ARG.get(args.command) == name else f"--{name}"
            raise ValueError(f"{args.command} {flag} {value}: stage commands take local folders; "
                             "for object storage run the pipeline with `customir run CONFIG` "
                             "and `run_dir: s3://…` (or `--only STAGE`)")


def _local_model(model: str, work_dir: str | None) -> str | Path:
    """What to serve: a local path as it is; a run folder on object storage by its export/,
    pulled into the local mirror first (the server loads local files)."""
    from customir import storage
    from customir.run_store import RunStore

    local = storage.local_path(model)
    if local is not None:
        return local
    store = RunStore(model, work_dir)
    store.check()
    return store.require("export")


def _counts(manifest) -> dict:
    return {unit: {"in": b.n_in, "out": b.n_out, "skipped": b.skipped}
            for unit, b in manifest.balances.items()}


def _known_errors() -> tuple[type[BaseException], ...]:
    from customir.config import ConfigError
    from customir.evaluate.evaluate import EvalDataError
    from customir.export.onnx import ParityError
    from customir.llm.gguf import ModelUnavailable
    from customir.manifest import BalanceError
    from customir.runtime import WorkerCrashed
    from customir.schemas import SchemaError

    return (ConfigError, SchemaError, EvalDataError, ParityError, ModelUnavailable, BalanceError,
            WorkerCrashed, FileNotFoundError, NotADirectoryError, ImportError, ValueError)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from customir.runtime import sigterm_received, stop_cleanly_on_sigterm

    args = build_parser().parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    stop_cleanly_on_sigterm()
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if sigterm_received():
            print("customir: terminated (SIGTERM)", file=sys.stderr)
            return 143
        print("customir: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only the known kinds are shown without traceback
        if isinstance(exc, _known_errors()):
            print(f"customir: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # in-process callers get theirs back


if __name__ == "__main__":
    sys.exit(main())
