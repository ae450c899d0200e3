"""Rebuild examples/sample_corpus and examples/sample_eval from BEIR SciFact (provenance script).

Run from the repo root with SciFact at ../shared/data/beir/scifact:
    python examples/make_sample_corpus.py ../shared/data/beir/scifact

The sample holds the abstracts relevant to 40 SciFact *test* claims (so the demo can report a
human-judged score) plus random other abstracts, 300 in all, spread over four formats so ingest
sees each. The 40 claims and their qrels are copied for evaluation only; nothing trains on them.
"""

import json
import random
import sys
from pathlib import Path

src = Path(sys.argv[1])
out = Path(__file__).parent
corpus = {}
for line in (src / "corpus.jsonl").read_text().splitlines():
    rec = json.loads(line)
    corpus[rec["_id"]] = rec
queries = {}
for line in (src / "queries.jsonl").read_text().splitlines():
    queries[json.loads(line)["_id"]] = json.loads(line)
qrels: dict[str, list[str]] = {}
for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]:
    qid, did, score = line.strip().split("\t")
    if int(score) > 0:
        qrels.setdefault(qid, []).append(did)

rng = random.Random(7)
eval_qids = sorted(qrels, key=int)[:40]
relevant = sorted({d for q in eval_qids for d in qrels[q]}, key=int)
others = sorted(set(corpus) - set(relevant), key=int)
picked = relevant + rng.sample(others, 300 - len(relevant))
rng.shuffle(picked)
# Relevant abstracts stay in the jsonl so their ids match the qrels; the other formats get
# non-judged abstracts (their doc ids are file paths).
free = [d for d in picked if d not in set(relevant)]
as_md, as_txt, as_html = free[:30], free[30:50], free[50:60]
in_jsonl = [d for d in picked if d not in set(as_md + as_txt + as_html)]

sample = out / "sample_corpus"
for sub in ("notes", "plain", "web"):
    (sample / sub).mkdir(parents=True, exist_ok=True)
with open(sample / "abstracts.jsonl", "w") as fh:
    for d in in_jsonl:
        rec = corpus[d]
        fh.write(json.dumps({"_id": d, "title": rec["title"], "text": rec["text"]}) + "\n")
for d in as_md:
    rec = corpus[d]
    (sample / "notes" / f"{d}.md").write_text(f"# {rec['title']}\n\n{rec['text']}\n")
for d in as_txt:
    (sample / "plain" / f"{d}.txt").write_text(corpus[d]["text"] + "\n")
for d in as_html:
    rec = corpus[d]
    (sample / "web" / f"{d}.html").write_text(
        f"<html><head><title>{rec['title']}</title></head><body><h1>{rec['title']}</h1>"
        f"<p>{rec['text']}</p></body></html>\n")

ev = out / "sample_eval"
ev.mkdir(exist_ok=True)
with open(ev / "queries.jsonl", "w") as fh:
    for q in eval_qids:
        fh.write(json.dumps({"_id": q, "text": queries[q]["text"]}) + "\n")
with open(ev / "qrels.tsv", "w") as fh:
    fh.write("query-id\tcorpus-id\tscore\n")
    for q in eval_qids:
        for d in qrels[q]:
            fh.write(f"{q}\t{d}\t1\n")
print(len(in_jsonl), len(as_md), len(as_txt), len(as_html), len(eval_qids), len(relevant))
