"""The LLM hard-negative verifier on SciFact *train* pairs: does it tell a query's true passage
from a BM25 near-miss?

    python benchmarks/verifier.py [--queries 60] [--methods likelihood,judge_yes_no,judge_scale]
                                  [--data DIR] [--llm-backend llamacpp|scripted] [--model NAME]

Only ``qrels/train.tsv`` and the queries it names are read (never the test qrels or test
queries). The first ``--queries`` train queries, in ascending numeric query id, that have a
relevant document in the corpus and a BM25 near-miss are used. Passage text is
``title + ". " + text`` (the prompt builders cut passages at 1500 characters). Per query:

- the true pair: (query, its first relevant document in qrels/train.tsv order);
- the near-miss pair: (query, the highest-ranked document of BM25 over the whole corpus that is
  not among the query's relevant documents).

Each method of ``customir.negatives.verify.score_pair`` scores both pairs with one LLM, loaded
once. Per method: pairwise accuracy (true score > near-miss score; ties count half) with a 95%
Wilson score interval; the share of near-misses the verify stage would drop as false negatives
(``judge_candidates`` with ``--margin``, default 0); for the judge methods the classification
accuracy at threshold 0.5 (mean of: true pair >= 0.5, near-miss < 0.5); mean scores; seconds per
scored pair. BM25's own pairwise accuracy on the same pairs is printed as a reference (chance is
0.5 for every method), and each method's ``ratio_vs_bm25`` is its pairwise accuracy over BM25's
(above 1: the LLM tells the true passage from BM25's near-miss more often than BM25 does; null
when BM25 ranks every near-miss above the true passage).

The last line is one JSON object: {"benchmark": "verifier", "model", "queries", "qrels": "train",
"methods": {method: {"pairwise_accuracy", "ci95", "near_miss_dropped_share", "ratio_vs_bm25",
...}}, "bm25_reference", "ratio_vs_bm25": the verify stage's default method's (or, when it was
not run, the first method's) ratio, "ratio_method": that method, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "beir" / "scifact"
METHODS = ("likelihood", "judge_yes_no", "judge_scale")
JUDGE_THRESHOLD = 0.5


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _lines(path: Path) -> list[str]:
    """Non-empty lines with CRLF / trailing whitespace stripped."""
    return [line.rstrip("\r\n").strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _id_key(value: str) -> tuple:
    """Numeric ids in numeric order, anything else after them in string order."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def load_train_pairs(data: Path) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """Corpus passages, the train queries and their relevant documents (qrels order)."""
    needed = [data / "corpus.jsonl", data / "queries.jsonl", data / "qrels" / "train.tsv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        sys.exit(f"verifier benchmark: BEIR data not found at {data} (missing: "
                 f"{', '.join(missing)}); pass --data DIR")
    relevant: dict[str, list[str]] = {}
    for line in _lines(data / "qrels" / "train.tsv"):
        fields = line.split("\t")
        if fields[0] == "query-id" or len(fields) < 3:
            continue
        query_id, doc_id, score = fields[0], fields[1], fields[2]
        if float(score) > 0 and doc_id not in relevant.setdefault(query_id, []):
            relevant[query_id].append(doc_id)
    relevant = {q: docs for q, docs in relevant.items() if docs}
    queries = {}
    for line in _lines(data / "queries.jsonl"):
        row = json.loads(line)
        if str(row["_id"]) in relevant:            # train queries only
            queries[str(row["_id"])] = row["text"]
    corpus = {}
    for line in _lines(data / "corpus.jsonl"):
        row = json.loads(line)
        title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
        corpus[str(row["_id"])] = f"{title}. {text}" if title else text
    return corpus, queries, relevant


def build_pairs(corpus: dict[str, str], queries: dict[str, str],
                relevant: dict[str, list[str]], n: int) -> tuple[list[dict], dict]:
    """The first ``n`` usable train queries with their true and BM25 near-miss passages."""
    from customir.negatives.bm25 import BM25Index

    doc_ids = list(corpus)
    row_of = {d: r for r, d in enumerate(doc_ids)}
    started = time.perf_counter()
    index = BM25Index([corpus[d] for d in doc_ids])
    _progress(f"BM25 index over {len(doc_ids)} documents in {time.perf_counter() - started:.1f} s")
    order = sorted((q for q in queries if any(d in corpus for d in relevant[q])), key=_id_key)
    skipped = {"no_relevant_doc_in_corpus": len(queries) - len(order), "no_near_miss": 0}
    pairs: list[dict] = []
    batch = 64
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        k = min(index.size, max(len(relevant[q]) for q in chunk) + 1)
        rows, scores = index.search([queries[q] for q in chunk], k)
        for i, query_id in enumerate(chunk):
            positive = next(d for d in relevant[query_id] if d in corpus)
            near = next(((doc_ids[r], float(s)) for r, s in zip(rows[i], scores[i])
                         if r >= 0 and doc_ids[r] not in relevant[query_id]), None)
            if near is None:
                skipped["no_near_miss"] += 1
                continue
            pairs.append({"query_id": query_id, "query": queries[query_id],
                          "positive_id": positive, "positive": corpus[positive],
                          "near_miss_id": near[0], "near_miss": corpus[near[0]],
                          "near_miss_bm25": near[1]})
            if len(pairs) == n:
                break
        if len(pairs) == n:
            break
    positive_bm25 = index.score([p["query"] for p in pairs],
                                [row_of[p["positive_id"]] for p in pairs])
    for pair, score in zip(pairs, positive_bm25):
        pair["positive_bm25"] = float(score)
    return pairs, skipped


def wilson(successes: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval for a proportion (ties counted half, so successes may be x.5)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def pairwise(true_scores: list[float], near_scores: list[float]) -> tuple[float, int]:
    """Successes (ties half) and the number of pairs."""
    wins = sum(1.0 if t > m else 0.5 if t == m else 0.0 for t, m in zip(true_scores, near_scores))
    return wins, len(true_scores)


def measure(llm, method_name: str, pairs: list[dict], margin: float) -> dict:
    from customir.config import VerifyMethod
    from customir.negatives.verify import FALSE_NEGATIVE, judge_candidates, score_pair

    method = VerifyMethod(method_name)
    true_scores, near_scores = [], []
    started = time.perf_counter()
    for i, pair in enumerate(pairs, 1):
        true_scores.append(score_pair(llm, method, pair["query"], pair["positive"]))
        near_scores.append(score_pair(llm, method, pair["query"], pair["near_miss"]))
        if i % 10 == 0 or i == len(pairs):
            elapsed = time.perf_counter() - started
            _progress(f"{method_name}: {i}/{len(pairs)} queries, {elapsed:.0f} s "
                      f"({elapsed / (2 * i):.2f} s/pair)")
    elapsed = time.perf_counter() - started
    verdicts = [judge_candidates(t, [m], margin)[0] for t, m in zip(true_scores, near_scores)]
    wins, n = pairwise(true_scores, near_scores)
    result = {
        "pairwise_accuracy": round(wins / n, 4),
        "ci95": wilson(wins, n),
        "ties": sum(t == m for t, m in zip(true_scores, near_scores)),
        "near_miss_dropped_share": round(verdicts.count(FALSE_NEGATIVE) / n, 4),
        "threshold_accuracy": None,
        "mean_true_score": round(sum(true_scores) / n, 4),
        "mean_near_miss_score": round(sum(near_scores) / n, 4),
        "s_per_pair": round(elapsed / (2 * n), 3),
    }
    if method != VerifyMethod.likelihood:
        true_ok = sum(t >= JUDGE_THRESHOLD for t in true_scores) / n
        near_ok = sum(m < JUDGE_THRESHOLD for m in near_scores) / n
        result["threshold_accuracy"] = round((true_ok + near_ok) / 2, 4)
    return result


def ratio_vs_bm25(method_accuracy: float, bm25_accuracy: float) -> float | None:
    """The method's pairwise accuracy over BM25's on the same pairs; None when BM25's is 0.

    >>> ratio_vs_bm25(0.75, 0.5), ratio_vs_bm25(0.75, 0.0)
    (1.5, None)
    """
    return round(method_accuracy / bm25_accuracy, 4) if bm25_accuracy else None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="BEIR SciFact folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)")
    parser.add_argument("--queries", type=int, default=60, help="train queries to use")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated VerifyMethod values")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="false_negative_margin given to judge_candidates")
    parser.add_argument("--llm-backend", choices=["llamacpp", "scripted"], default="llamacpp")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct",
                        help="llamacpp model name or .gguf path")
    parser.add_argument("--threads", type=int, help="llamacpp CPU threads (default: all cores)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")

    corpus, queries, relevant = load_train_pairs(args.data.resolve())
    pairs, skipped = build_pairs(corpus, queries, relevant, args.queries)
    if not pairs:
        sys.exit("verifier benchmark: no train query has both a relevant document and a near-miss")
    _progress(f"{len(pairs)} train queries (skipped: {skipped})")

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from customir.config import LLMConfig, VerifyConfig
    from customir.llm.protocol import load_llm

    config = (LLMConfig(backend="scripted") if args.llm_backend == "scripted"
              else LLMConfig(backend="llamacpp", model=args.model, n_threads=args.threads))
    started = time.perf_counter()
    llm = load_llm(config, scoring=True)
    load_s = time.perf_counter() - started
    _progress(f"loaded {llm.name} in {load_s:.1f} s")

    results = {m: measure(llm, m, pairs, args.margin) for m in methods}
    bm25_wins, n = pairwise([p["positive_bm25"] for p in pairs],
                            [p["near_miss_bm25"] for p in pairs])
    bm25 = {"pairwise_accuracy": round(bm25_wins / n, 4), "ci95": wilson(bm25_wins, n)}
    for r in results.values():
        r["ratio_vs_bm25"] = ratio_vs_bm25(r["pairwise_accuracy"], bm25["pairwise_accuracy"])
    headline = next((m for m in results if m == VerifyConfig().method.value), methods[0])

    print(f"verifier on SciFact train qrels: {n} queries, true passage vs BM25 near-miss, "
          f"model {llm.name}, margin {args.margin}")
    print(f"{'method':<14} {'pair acc':>8} {'95% CI (Wilson)':>16} {'vs bm25':>7} {'ties':>4} "
          f"{'dropped':>8} {'thr acc':>7} {'mean true':>10} {'mean near':>10} {'s/pair':>7}")
    for m, r in results.items():
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        print(f"{m:<14} {r['pairwise_accuracy']:>8.3f} {ci:>16} {_fmt(r['ratio_vs_bm25']):>7} "
              f"{r['ties']:>4} {r['near_miss_dropped_share']:>8.3f} "
              f"{_fmt(r['threshold_accuracy']):>7} {r['mean_true_score']:>10.3f} "
              f"{r['mean_near_miss_score']:>10.3f} {r['s_per_pair']:>7.2f}")
    ci = f"[{bm25['ci95'][0]:.3f}, {bm25['ci95'][1]:.3f}]"
    print(f"{'bm25 (ref)':<14} {bm25['pairwise_accuracy']:>8.3f} {ci:>16} {'1.000':>7}")
    print("pair acc: true > near-miss (ties 1/2); vs bm25: pair acc / bm25's pair acc; dropped: "
          f"near-miss judged false negative; thr acc: judge score vs {JUDGE_THRESHOLD}; "
          "chance = 0.5")
    figures = {
        "benchmark": "verifier",
        "model": llm.name,
        "backend": args.llm_backend,
        "queries": n,
        "qrels": "train",
        "passage_text": "title. text",
        "margin": args.margin,
        "ci": "wilson95",
        "skipped_queries": skipped,
        "load_s": round(load_s, 1),
        "methods": results,
        "bm25_reference": bm25,
        "ratio_vs_bm25": results[headline]["ratio_vs_bm25"],
        "ratio_method": headline,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
