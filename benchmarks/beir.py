"""The whole adaptation on a BEIR dataset, judged on its human test queries.

    python benchmarks/beir.py DATASET_DIR [--config benchmarks/configs/beir.yaml]
        [--set section.key=value ...] [--ablation [VARIANT ...]] [--runs runs/beir]

DATASET_DIR is any BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/test.tsv). Only
``corpus.jsonl`` goes into the pipeline (copied to ``RUNS/<dataset>/corpus/``): no query and no
qrel is seen by ingest, generation, mining, verification or training. The test queries and qrels
are read afterwards, for evaluation only.

Evaluation follows the standard BEIR protocol, independent of the pipeline's chunking: every
document is ``title + " " + text``, encoded whole (max_seq_length 256) and ranked by cosine, or
by BM25 (bm25s, Lucene scoring, English stemmer and stopwords). Systems: ``bm25``, ``base``
(the untuned model), ``tuned``, and the reciprocal-rank fusions ``hybrid-base`` (BM25 + base,
the bar any hybrid has to clear) and ``hybrid`` (BM25 + tuned). The same dense models are also
scored the way customir indexes a corpus, on the run's own chunks (``title + " " + chunk``, a
document scoring as its best chunk, MaxP): ``base-chunks``, ``tuned-chunks`` and their fusions
with BM25, ``hybrid-base-chunks`` and ``hybrid-chunks``. Most documents are longer than the 256
word pieces a whole-document encoding reads, so the chunked protocol sees the whole text.
nDCG, Recall, P, MAP and MRR at 1/5/10/100 (pytrec_eval); every difference comes with a paired
randomization test on per-query nDCG@10. The scoring (``Evaluator``) is in ``beir_scoring.py``.

The pipeline run lives in ``RUNS/<dataset>/run`` (its own report with plots is in
``run/evaluation/report.html``); a rerun reuses every finished stage. ``--ablation`` trains one
variant per factor (one flag each, see VARIANTS) on copies of the main run's upstream stages, so
only the stages a factor touches run again. Each variant is compared with zero-shot and with
the main run's tuned model (paired randomization test), so a default is changed only for a
difference that is more than noise.

Writes ``benchmarks/results/<dataset>-<date>.{json,md}`` once the main run is scored and again
after each variant; prints the table and the per-stage wall times, then one JSON object as the
last line. Embeddings are cached in ``RUNS/<dataset>/cache/``: the base model's under the content
of its model folder (see ``beir_scoring.model_key``), the main tuned model's under its training run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from datetime import date
from pathlib import Path

from common import ROOT, finished_at, logger  # noqa: E402  (sets up sys.path and env)
from beir_scoring import SYSTEMS, Evaluator  # noqa: E402

say = logger("beir-bench")

STAGES = ("ingest", "generate", "mine", "verify", "train", "evaluate")  # export is not judged
STRUCTURAL_KINDS = ["title", "heading", "subject"]
LLM_KINDS = ["keyword", "question", "claim", "multihop"]
# One factor per variant; each is the main config plus these overrides.
VARIANTS = {
    "structural_only": [f"train.query_kinds={STRUCTURAL_KINDS}"],
    "llm_only": [f"train.query_kinds={LLM_KINDS}"],
    "no_verify": ["verify.enabled=false"],
    "no_margin": ["mine.relative_margin=null"],
    "dense_negatives": ["mine.backend=dense"],  # the base model's own confusions (NV-Retriever)
    "hybrid_negatives": ["mine.backend=hybrid"],  # RRF of the BM25 and the dense rankings
    # a title trains on the chunk of its document BM25 ranks highest for it, not the first:
    # human queries may match any chunk (documents are scored by their best one)
    "title_best_chunk": ["generate.title_chunk=best"],
    # GISTEmbed: the frozen base model masks in-batch and hard negatives it rates above the
    # positive (likely false negatives), a dense check on top of the BM25 margin
    "gist_loss": ["train.loss=gist"],
    "temperature_0.02": ["train.temperature=0.02"],
    "temperature_0.1": ["train.temperature=0.1"],
    "steps_x2": [],  # filled in from the main config: twice its max_steps (or epochs)
    # four times the in-batch negatives for the same training rows: batch x4, steps /4
    # (filled in from the main config; validation still runs every quarter of the steps)
    "batch_x4": [],
    # not a factor: the same recipe with another split and training order, i.e. the noise
    # between two draws that any other row's difference has to exceed
    "seed_14": ["train.seed=14"],
    "seed_15": ["train.seed=15"],
    "seed_16": ["train.seed=16"],
}


# -- data ---------------------------------------------------------------------------------------
def prepare_corpus(dataset: Path, root: Path) -> Path:
    """A folder holding only the dataset's corpus.jsonl (queries.jsonl must not be ingested)."""
    folder = root / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    source, copy = dataset / "corpus.jsonl", folder / "corpus.jsonl"
    if not source.is_file():
        raise SystemExit(f"{dataset}: no corpus.jsonl (not a BEIR folder)")
    if not copy.is_file() or copy.stat().st_size != source.stat().st_size:
        shutil.copy2(source, copy)  # keeps the mtime, so the ingest fingerprint stays stable
    return folder


def read_documents(dataset: Path) -> dict[str, str]:
    documents = {}
    with open(dataset / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                documents[str(record["_id"])] = (f"{record.get('title') or ''} "
                                                 f"{record.get('text') or ''}").strip()
    return documents


def read_test_set(dataset: Path, split: str) -> tuple[dict[str, str], dict]:
    from customir.evaluate.evaluate import read_beir_qrels, read_beir_queries

    qrels_path = dataset / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise SystemExit(f"{dataset}: no qrels/{split}.tsv")
    queries = read_beir_queries(dataset / "queries.jsonl")
    qrels = {q: rel for q, rel in read_beir_qrels(qrels_path).items() if q in queries}
    return {q: queries[q] for q in qrels}, qrels


def read_chunks(run_dir: Path) -> tuple[list[str], list[str]]:
    """The run's chunks as (document id, ``title + " " + chunk``) columns, in chunk order."""
    from customir.schemas import CHUNKS, read_table

    table = read_table(run_dir / "chunks", CHUNKS).select(["doc_id", "title", "text"]).to_pydict()
    texts = [f"{title or ''} {text}".strip() for title, text in zip(table["title"], table["text"])]
    return table["doc_id"], texts


# -- the pipeline ---------------------------------------------------------------------------------
def run_stages(config, until: str = "evaluate") -> dict[str, dict]:
    """The pipeline up to ``until``; per stage: seconds (from its manifest: the whole stage,
    possibly run by an earlier invocation) and whether this invocation ran it."""
    from customir.manifest import Manifest
    from customir.pipeline import STAGE_FOLDERS, STAGES, run_pipeline

    stages = STAGES[:STAGES.index(until) + 1]
    run = Path(config.run_dir)
    before = {stage: finished_at(run / STAGE_FOLDERS[stage]) for stage in stages}
    invocation = run_pipeline(config, serve_check=False, until=until)["timings"]
    timings = {}
    for stage in stages:
        manifest = Manifest.read(run / STAGE_FOLDERS[stage])
        ran = manifest.finished_at != before[stage]
        timings[stage] = {"seconds": round(manifest.seconds, 1), "ran_now": ran,
                          "invocation_seconds": invocation[stage]}
        say(f"{stage}: {'ran' if ran else 'reused'} ({manifest.seconds:.1f} s)")
    return timings


# -- variants -------------------------------------------------------------------------------------
def variant_overrides(name: str, config) -> list[str]:
    train = config.train
    if name == "steps_x2":
        if train.max_steps:
            return [f"train.max_steps={2 * train.max_steps}"]
        return [f"train.epochs={2 * train.epochs}"]
    if name == "batch_x4":
        steps = [f"train.max_steps={max(1, train.max_steps // 4)}"] if train.max_steps else []
        return [f"train.batch_size={4 * train.batch_size}", *steps]
    return VARIANTS[name]


def seed_variant(main_run: Path, variant_run: Path) -> None:
    """Copy the main run's upstream stage folders (hard links where possible) so the variant
    reuses every stage whose settings it shares."""
    for folder in ("chunks", "queries", "indexes", "candidates", "triples"):
        source, target = main_run / folder, variant_run / folder
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- output ---------------------------------------------------------------------------------------
def markdown(dataset: str, main: dict, ablation: dict[str, dict], timings: dict,
             meta: dict) -> str:
    columns = ["nDCG@10", "Recall@10", "Recall@100", "MRR@10", "MAP@10", "P@1"]
    lines = [f"# {dataset}: {main['n_queries']} test queries, {date.today().isoformat()}", "",
             f"Config: `{meta['config']}` + {meta['overrides'] or 'no overrides'}; "
             f"{meta['documents']} documents ({meta['chunks']} chunks); whole run "
             f"{meta['pipeline_minutes']:.1f} min (pipeline stages) on this machine.", "",
             "Whole documents (BEIR protocol, truncated at 256 word pieces) and, as `-chunks`, "
             "the run's own chunks (a document scores as its best chunk).", "",
             "| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for system in SYSTEMS:
        m = main["results"][system]
        lines.append(f"| {system} | " + " | ".join(f"{m[c]:.4f}" for c in columns) + " |")
    verdict = {True: "significant", False: "not significant"}
    lines += ["", *(f"- {c['a']} vs {c['b']}: {c['delta']:+.4f} nDCG@10, paired randomization "
                    f"p = {c['p_value']:.4f} ({verdict[c['p_value'] < 0.05]} at 0.05)"
                    for c in main["comparisons"]), "",
              "| stage | seconds | this invocation |", "|---|---|---|",
              *(f"| {s} | {timings[s]['seconds']:.1f} "
                f"| {'ran' if timings[s]['ran_now'] else 'reused'} |"
                for s in STAGES if s in timings), ""]
    if ablation:
        lines += ["## Ablation (one factor per row; tuned model unless noted)", "",
                  "| variant | overrides | tuned nDCG@10 | Δ vs base (p) | Δ vs main (p) | R@100 "
                  "| hybrid nDCG@10 | tuned-chunks nDCG@10 | train s | training rows |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        r = main["results"]
        c = next(c for c in main["comparisons"] if (c["a"], c["b"]) == ("tuned", "base"))
        lines.append(f"| main | (main config) | {r['tuned']['nDCG@10']:.4f} | {c['delta']:+.4f} "
                     f"({c['p_value']:.3f}) | | {r['tuned']['Recall@100']:.4f} "
                     f"| {r['hybrid']['nDCG@10']:.4f} | {_ndcg(r, 'tuned-chunks')} "
                     f"| {timings['train']['seconds']:.0f} | {meta.get('training_rows', '')} |")
        for name, v in ablation.items():
            if "error" in v:
                lines.append(f"| {name} | {' '.join(v['overrides'])} | failed: {v['error']} "
                             "| | | | | | | |")
                continue
            r = v["results"]
            c = next(c for c in v["comparisons"] if (c["a"], c["b"]) == ("tuned", "base"))
            m = next((f"{c['delta']:+.4f} ({c['p_value']:.3f})" for c in v["comparisons"]
                      if (c["a"], c["b"]) == ("tuned", "main")), "not compared")
            lines.append(f"| {name} | `{' '.join(v['overrides']) or '(main config)'}` "
                         f"| {r['tuned']['nDCG@10']:.4f} | {c['delta']:+.4f} "
                         f"({c['p_value']:.3f}) | {m} | {r['tuned']['Recall@100']:.4f} "
                         f"| {r['hybrid']['nDCG@10']:.4f} | {_ndcg(r, 'tuned-chunks')} "
                         f"| {v['train_seconds']:.0f} | {v['training_rows']} |")
        lines.append("")
    return "\n".join(lines)


def _ndcg(results: dict, system: str) -> str:
    """nDCG@10 of a system, or "not scored" (a variant kept from a results file that predates
    the system)."""
    return f"{results[system]['nDCG@10']:.4f}" if system in results else "not scored"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a misspelt ``--ablation`` name stops here, not after the main run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="a BEIR folder (corpus.jsonl, queries.jsonl, "
                        "qrels/test.tsv)")
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/configs/beir.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a config value (section.key=value); repeatable")
    parser.add_argument("--split", default="test", help="qrels split used for evaluation")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "beir")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--ablation", nargs="*", metavar="VARIANT", choices=list(VARIANTS),
                        help=f"also train these variants (none named: all of {list(VARIANTS)})")
    parser.add_argument("--skip-main", action="store_true",
                        help="with --ablation: reuse the main run and its results file")
    return parser.parse_args(argv)


def save_results(out_json: Path, record: dict) -> str:
    """Write the results JSON and its markdown table (again after each variant, so a variant
    that fails or a stopped run keeps everything finished before it); return the table."""
    table = markdown(record["dataset"], record["main"], record["ablation"],
                     record["stage_seconds"], record)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2, sort_keys=True))
    out_json.with_suffix(".md").write_text(table)
    return table


def run_variant(variant: str, args, config, corpus: Path, root: Path, evaluator: Evaluator,
                main_run: tuple[dict, dict]) -> dict:
    """Train one ablation variant on copies of the main run's upstream stages and score it."""
    from customir.config import load_config
    from customir.manifest import Manifest

    overrides = variant_overrides(variant, config)
    variant_run = root / "ablation" / variant
    seed_variant(Path(config.run_dir), variant_run)
    vconfig = load_config(args.config, args.overrides + overrides, corpus=str(corpus),
                          run_dir=str(variant_run))
    say(f"ablation {variant}: {overrides}")
    try:
        vtimings = run_stages(vconfig, until="train")
    except Exception as exc:  # one failed variant is reported, the rest still run
        return {"overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}
    trained = Manifest.read(variant_run / "train")
    return {"overrides": overrides, "timings": vtimings, "train_seconds": trained.seconds,
            "training_rows": trained.balances["queries"].n_out,
            **evaluator.score(variant_run / "train" / "model", main=main_run)}


def main_cache_name(train_manifest) -> str:
    """The main model's embeddings are cached under a name unique to its training run."""
    return "tuned-" + hashlib.sha1(
        f"{train_manifest.config_hash} {train_manifest.finished_at}".encode()).hexdigest()[:12]


def main() -> None:
    args = parse_args()

    from customir.config import load_config
    from customir.manifest import Manifest

    dataset = args.dataset.resolve()
    name = dataset.name
    root = args.runs.resolve() / name
    corpus = prepare_corpus(dataset, root)
    config = load_config(args.config, args.overrides, corpus=str(corpus),
                         run_dir=str(root / "run"))
    documents = read_documents(dataset)
    queries, qrels = read_test_set(dataset, args.split)
    say(f"{name}: {len(documents)} documents; {len(queries)} {args.split} queries "
        "(evaluation only)")
    out_json = args.results / f"{name}-{date.today().isoformat()}.json"

    ablation: dict[str, dict] = {}
    if args.skip_main and out_json.is_file():
        previous = json.loads(out_json.read_text())
        main_result, timings = previous["main"], previous["stage_seconds"]
        ablation = previous.get("ablation", {})  # earlier variants stay; rerun ones are replaced
        if set(SYSTEMS) - set(main_result["results"]):
            main_result = None  # written before a system was added: the main run is rescored
    else:
        timings = run_stages(config)
        main_result = None
    chunks = read_chunks(Path(config.run_dir))
    evaluator = Evaluator(documents, chunks, queries, qrels, config.train.base_model,
                          root / "cache", config.evaluate.batch_size)
    main_model = Path(config.run_dir) / "train" / "model"
    train_manifest = Manifest.read(Path(config.run_dir) / "train")
    main_name = main_cache_name(train_manifest)
    if main_result is None:
        main_result = evaluator.score(main_model, main_name)
    pipeline_minutes = sum(t["seconds"] for t in timings.values()) / 60
    record = {"dataset": name, "date": date.today().isoformat(),
              "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT)
                            else args.config),
              "overrides": args.overrides, "documents": len(documents), "chunks": len(chunks[0]),
              "pipeline_minutes": round(pipeline_minutes, 1),
              "training_rows": train_manifest.balances["queries"].n_out,
              "main": main_result, "stage_seconds": timings,
              "training": train_manifest.extra.get("metrics"), "ablation": ablation}
    table = save_results(out_json, record)  # before any variant: none can lose the main run

    variants = VARIANTS if args.ablation == [] else args.ablation or []
    main_run = evaluator.dense(main_model, main_name) if variants else None
    for variant in variants:
        ablation[variant] = run_variant(variant, args, config, corpus, root, evaluator,
                                        main_run)
        table = save_results(out_json, record)
    print(table)
    r = main_result["results"]
    tuned_vs_base = next(c for c in main_result["comparisons"] if c["a"] == "tuned"
                         and c["b"] == "base")
    print(json.dumps({
        "dataset": name, "n_queries": main_result["n_queries"],
        **{f"ndcg10_{s.replace('-', '_')}": r[s]["nDCG@10"] for s in SYSTEMS},
        "ratio_vs_base": round(r["tuned"]["nDCG@10"] / r["base"]["nDCG@10"], 4),
        "ratio_vs_bm25": round(r["tuned"]["nDCG@10"] / r["bm25"]["nDCG@10"], 4),
        "p_value_tuned_vs_base": tuned_vs_base["p_value"],
        "pipeline_minutes": record["pipeline_minutes"],
        "ablation_ndcg10": {v: a["results"]["tuned"]["nDCG@10"] for v, a in ablation.items()
                            if "results" in a},
        "results_file": str(out_json)}))


if __name__ == "__main__":
    main()
