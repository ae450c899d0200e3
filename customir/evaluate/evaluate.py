"""Evaluate stage: base vs tuned vs BM25 → ``evaluation/report.{html,md,json}`` and its PNG figures.

Two kinds of query sets:

- ``synthetic-test``: the generated queries whose positive lies in a *test* document (split by
  the train stage; never trained on). Relevant = every chunk the query was written for.
- each configured BEIR set: real queries with human qrels on document ids; chunks are scored
  and a document takes its best chunk's score.

Every uplift is reported with a paired randomization test on per-query nDCG@10.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from customir.config import COMPARED_CUT_OFF, SYNTHETIC_SET, BeirEvalConfig, EvaluateConfig, \
    MineConfig
from customir.corpus.readers import whole_characters
from customir.evaluate.details import report_details, stage_manifests, \
    training_data_summary
from customir.evaluate.metrics import Qrels, mean_metrics, paired_randomization_test, \
    per_query_metrics
from customir.evaluate.report import write_report
from customir.evaluate.retrieval import Documents, bm25_run, dense_run, fuse_runs
from customir.manifest import Balance, Manifest, find_complete, fingerprint, log, stage_output
from customir.models import load_sentence_transformer
from customir.negatives.bm25 import BM25Index
from customir.schemas import CHUNKS, TRIPLES, read_table
from customir.train.trainer import MODEL_DIR, SPLIT_FILE

STAGE = "evaluate"
COMPARED_METRIC = f"nDCG@{COMPARED_CUT_OFF}"


class EvalDataError(ValueError):
    """A BEIR file that cannot be used; the message names the file and line."""


def read_beir_queries(path: Path) -> dict[str, str]:
    queries = {}
    # utf-8-sig: a file saved with a byte-order mark (Windows editors) reads the same
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").split("\n"),
                                  start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            queries[whole_characters(str(record["_id"]))] = whole_characters(str(record["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EvalDataError(f"{path}:{number}: not a BEIR query record ({exc})") from None
    return queries


def read_beir_qrels(path: Path) -> Qrels:
    """Read a BEIR qrels TSV (header line, CRLF and a byte-order mark tolerated); keep
    relevance > 0."""
    qrels: Qrels = defaultdict(dict)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row) or (number == 1 and row[0] == "query-id"):
                continue
            try:
                qid, did, score = row[0], row[1], int(row[2])
            except (IndexError, ValueError):
                raise EvalDataError(f"{path}:{number}: expected query-id, corpus-id, score; "
                                    f"got {row}") from None
            if score > 0:
                qrels[qid][did] = score
    return dict(qrels)


@dataclass
class TestSet:
    corpus: dict[str, str]          # chunk_id → text
    chunk_doc: dict[str, str]       # chunk_id → doc_id
    queries: dict[str, str]         # query_id → text (positives in test documents only)
    qrels: Qrels                    # query_id → {chunk_id: 1} (every chunk it was written for)
    test_docs: int = 0              # documents the train stage held out for testing
    left_out: dict[str, int] = field(default_factory=dict)  # test queries not scored, by kind
    on_test_docs: int = 0           # distinct generated query texts wholly on test documents

    def balance(self) -> Balance:
        """Generated queries on test documents: scored + left out by kind."""
        return Balance(self.on_test_docs, len(self.queries), dict(self.left_out))


# Inverse-cloze queries are sentences of their own chunk: trivially found, not a retrieval test.
NOT_TEST_KINDS = {"inverse_cloze"}
LEFT_OUT_WHY = "a sentence of its own chunk is found by string matching"


def synthetic_test_set(chunks_dir: Path, triples_dir: Path, train_dir: Path) -> TestSet:
    """The generated queries whose positives *all* lie in the train stage's test documents (a
    multi-hop question with a chunk in a training document was seen in training)."""
    chunks = read_table(chunks_dir, CHUNKS).select(["chunk_id", "doc_id", "text"]).to_pydict()
    corpus = dict(zip(chunks["chunk_id"], chunks["text"]))
    chunk_doc = dict(zip(chunks["chunk_id"], chunks["doc_id"]))
    split = dict(zip(*pq.read_table(Path(train_dir) / SPLIT_FILE).to_pydict().values()))
    test_docs = {d for d, s in split.items() if s == "test"}
    triples = read_table(triples_dir, TRIPLES).select(
        ["query_id", "query", "chunk_id", "kind", "negative_chunk_ids"]).to_pylist()
    check_triples_chunks(triples, chunk_doc, chunks_dir)
    positives: dict[str, set[str]] = defaultdict(set)
    for t in triples:
        positives[t["query"]].add(t["chunk_id"])
    on_test = [t for t in triples if all(chunk_doc[c] in test_docs for c in positives[t["query"]])]
    queries = {t["query_id"]: t["query"] for t in on_test if t["kind"] not in NOT_TEST_KINDS}
    # one test query per text (a multi-hop question has a row per supporting chunk)
    queries = {qid: q for q, qid in {q: qid for qid, q in sorted(queries.items())}.items()}
    scored = set(queries.values())
    left_out = Counter(kind for kind, _ in {(t["kind"], t["query"]) for t in on_test
                                            if t["kind"] in NOT_TEST_KINDS
                                            and t["query"] not in scored})
    qrels = {qid: {c: 1 for c in positives[q]} for qid, q in queries.items()}
    return TestSet(corpus, chunk_doc, queries, qrels, len(test_docs), dict(left_out),
                   len({t["query"] for t in on_test}))


def check_triples_chunks(triples: list[dict], chunk_doc: dict[str, str], chunks_dir: Path) -> None:
    """Every chunk the triples name (positives and hard negatives) is in ``chunks_dir``; else
    ``--chunks`` is another run's folder, said in one line (as the train stage does)."""
    named = {t["chunk_id"] for t in triples}
    named.update(c for t in triples for c in t["negative_chunk_ids"] or ())
    if missing := sorted(named - chunk_doc.keys()):
        raise EvalDataError(f"evaluate: {len(missing)} chunk ids of the triples are not in "
                            f"{chunks_dir} (e.g. {missing[0]!r}); give the chunks folder the "
                            "triples were made from")


def _systems(models: dict, corpus: dict[str, str], bm25: BM25Index, queries: dict[str, str],
             k: int, batch_size: int, cache: dict, documents: Documents | None = None) -> dict:
    """Each system's k best chunks per query, or with ``documents`` its k best documents."""
    runs = {"bm25": bm25_run(bm25, queries, list(corpus), k, documents)}
    for name, model in models.items():
        runs[name] = dense_run(model, queries, corpus, k, batch_size,
                               passage_embeddings=cache.get(name), documents=documents)
    return runs


# Hybrids: each dense model fused with BM25 by reciprocal rank (RRF of BM25 and the *untuned*
# model is the bar a tuned hybrid has to clear).
HYBRIDS = {"hybrid": "tuned", "hybrid-base": "base"}
COMPARISONS = (("tuned", "base"), ("tuned", "bm25"), ("base", "bm25"), ("hybrid", "hybrid-base"),
               ("hybrid", "bm25"))


def with_hybrids(runs: dict, k: int) -> dict:
    return {**runs, **{name: fuse_runs([runs[dense], runs["bm25"]], k)
                       for name, dense in HYBRIDS.items() if dense in runs and "bm25" in runs}}


def _score(runs: dict, qrels: Qrels, config: EvaluateConfig) -> dict:
    runs = with_hybrids(runs, max(config.k_values))
    per_query = {name: per_query_metrics(qrels, run, config.k_values) for name, run in runs.items()}
    results = {name: mean_metrics(pq_) for name, pq_ in per_query.items()}
    comparisons = []
    qids = sorted(qrels)
    for a, b in COMPARISONS:
        if a in per_query and b in per_query:
            va = [per_query[a][COMPARED_METRIC][q] for q in qids]
            vb = [per_query[b][COMPARED_METRIC][q] for q in qids]
            comparisons.append({
                "a": a, "b": b, "metric": COMPARED_METRIC, "n_queries": len(qids),
                "delta": results[a][COMPARED_METRIC] - results[b][COMPARED_METRIC],
                "p_value": paired_randomization_test(va, vb, config.permutations)})
    return {"n_queries": len(qids), "results": results, "comparisons": comparisons}


def run(chunks_dir: str | Path, triples_dir: str | Path, train_dir: str | Path,
        run_dir: str | Path, config: EvaluateConfig, base_model: str,
        mine_config: MineConfig | None = None, trust_remote_code: bool = False) -> Manifest:
    chunks_dir, triples_dir, train_dir = Path(chunks_dir), Path(triples_dir), Path(train_dir)
    run_dir = Path(run_dir)
    check_beir_files(config)
    out = run_dir / "evaluation"
    inputs = {"chunks": fingerprint(chunks_dir), "triples": fingerprint(triples_dir),
              "train": fingerprint(train_dir)}
    inputs.update({f"beir:{b.name}": f"{fingerprint(b.queries)}-{fingerprint(b.qrels)}"
                   for b in config.beir})
    mine_config = mine_config or MineConfig()
    # the BM25 baseline ranks as mining does: its settings are part of this stage's hash
    bm25_settings = (mine_config.stemmer, mine_config.k1, mine_config.b)
    config_hash = f"{config.config_hash()}-{base_model}-bm25:{bm25_settings}"
    if done := find_complete(out, config_hash, inputs):
        log("evaluate: up to date, skipping")
        return done
    started = time.monotonic()  # the manifest records the stage's whole wall time
    test = synthetic_test_set(chunks_dir, triples_dir, train_dir)
    judged_sets = [judged_beir_set(beir, test.chunk_doc) for beir in config.beir]
    check_something_to_evaluate(test, judged_sets, train_dir)  # before loading any model
    corpus = test.corpus
    models = {"base": load_sentence_transformer(base_model, trust_remote_code=trust_remote_code),
              "tuned": load_sentence_transformer(train_dir / MODEL_DIR,
                                                 trust_remote_code=trust_remote_code)}
    bm25 = BM25Index(list(corpus.values()), *bm25_settings)
    k = max(config.k_values)
    log(f"evaluate: encoding {len(corpus)} chunks with base and tuned models")
    cache = {name: m.encode(list(corpus.values()), batch_size=config.batch_size,
                            normalize_embeddings=True, convert_to_numpy=True)
             for name, m in models.items()}
    sets = {}
    if test.queries:
        sets[SYNTHETIC_SET] = _score(
            _systems(models, corpus, bm25, test.queries, k, config.batch_size, cache),
            test.qrels, config)
        sets[SYNTHETIC_SET]["note"] = (
            "Generated queries on held-out test documents (split by document; never trained "
            "on)." + "".join(f" {n} {kind} queries left out ({LEFT_OUT_WHY})."
                             for kind, n in test.left_out.items()))
    for judged in judged_sets:
        sets[judged.name] = _score_beir(judged, models, corpus, test.chunk_doc, bm25, config,
                                        cache)
    manifests = stage_manifests(run_dir, chunks_dir, triples_dir, train_dir)
    details = report_details(triples_dir, manifests, test, models, cache, config.batch_size)
    with stage_output(out, STAGE, config_hash, inputs, started) as (tmp, manifest):
        if (train_dir / "curves.png").is_file():  # the train stage's loss / validation curves
            shutil.copy(train_dir / "curves.png", tmp / "training_curves.png")
        details["stage_seconds"]["evaluate"] = round(time.monotonic() - started, 1)
        write_report(tmp, sets, training_data_summary(manifests), details, config.k_values)
        manifest.balances[SYNTHETIC_SET] = test.balance()
        manifest.balances.update({f"beir:{j.name}": j.balance for j in judged_sets})
        manifest.extra["sets"] = {name: {"n_queries": d["n_queries"],
                                         COMPARED_METRIC: {s: round(m[COMPARED_METRIC], 4)
                                                           for s, m in d["results"].items()}}
                                  for name, d in sets.items()}
    return manifest


def check_something_to_evaluate(test: TestSet, judged_sets: list[JudgedSet],
                                train_dir: Path) -> None:
    """No query set at all (a small corpus whose test documents hold no generated query, and
    no BEIR set) is said now, before the models are loaded and the corpus encoded."""
    if not test.queries and not judged_sets:
        why = (f"the {sum(test.left_out.values())} generated queries on the test documents are "
               f"all left out ({test.left_out}: {LEFT_OUT_WHY})" if test.left_out else
               "none of the generated queries lies wholly in the "
               f"{test.test_docs} test documents of {train_dir / SPLIT_FILE}")
        raise EvalDataError(
            f"evaluate: no query to evaluate on: {why}, and evaluate.beir names no set; add a "
            "BEIR set or hold out more documents (train.split)")


def check_beir_files(config: EvaluateConfig) -> None:
    """Read every ``evaluate.beir`` query and qrels file now, so a typo in a path or a malformed
    line is said before a run spends an hour on the stages that come before evaluation."""
    for beir in config.beir:
        for path in (beir.queries, beir.qrels):
            if not Path(path).is_file():
                raise FileNotFoundError(f"evaluate.beir {beir.name!r}: {path} not found")
        read_beir_queries(Path(beir.queries))
        read_beir_qrels(Path(beir.qrels))


@dataclass
class JudgedSet:
    """A BEIR set's queries that can be scored on this corpus, and what was left out."""
    name: str
    queries: dict[str, str]         # query_id → text, judged queries only
    qrels: Qrels                    # query_id → {doc_id: relevance}, judged queries only
    balance: Balance                # qrels queries in, judged out, skipped by reason
    note: str


def judged_beir_set(beir: BeirEvalConfig, chunk_doc: dict[str, str]) -> JudgedSet:
    """The set's queries with text and a relevant document in the corpus; none is an error,
    said before any model is loaded."""
    queries = read_beir_queries(Path(beir.queries))
    qrels = read_beir_qrels(Path(beir.qrels))
    docs = set(chunk_doc.values())
    judged = {q: rel for q, rel in qrels.items() if q in queries and set(rel) & docs}
    no_text = [q for q in qrels if q not in queries]
    no_doc = [q for q in qrels if q in queries and not set(qrels[q]) & docs]
    if not judged:
        raise EvalDataError(f"{beir.qrels}: none of its {len(qrels)} queries has both text in "
                            f"{beir.queries} and a relevant document in the corpus")
    skipped = {"no_query_text": len(no_text), "relevant_docs_not_in_corpus": len(no_doc)}
    note = (f"Human qrels from {beir.qrels}; chunks scored, a document takes its best chunk's "
            f"score. Skipped: {len(no_text)} queries without text, {len(no_doc)} whose "
            "relevant documents are not in the corpus.")
    return JudgedSet(beir.name, {q: queries[q] for q in judged}, judged,
                     Balance(len(qrels), len(judged), {k: v for k, v in skipped.items() if v}),
                     note)


def _score_beir(judged: JudgedSet, models, corpus, chunk_doc, bm25, config, cache) -> dict:
    runs = _systems(models, corpus, bm25, judged.queries, max(config.k_values),
                    config.batch_size, cache, Documents(list(corpus), chunk_doc))
    return {**_score(runs, judged.qrels, config), "note": judged.note}
