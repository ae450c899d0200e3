"""Ray connection and the one Ray Data pattern the batch stages share.

Local and cluster runs are the same code: :func:`ray_session` joins the cluster named by the
config or ``RAY_ADDRESS`` and otherwise starts a local one with this machine's CPUs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from typing import Any, Iterator

import pyarrow as pa

from customir.config import WORKER_RESTARTS, RayConfig
from customir.manifest import log

# Environment every Ray worker gets: models come from packages, llama.cpp threads sleep when idle.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}
SKIP_REASON = "skip_reason"
MAX_BLOCKS = 200
SKIP_DETAIL = "skip_detail"


class WorkerCrashed(RuntimeError):
    """A stage's Ray Data worker process kept dying (past its ``worker_restarts``)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or Kubernetes stopping the job), raised in the main thread so a run
    stops the way Ctrl-C stops it: outputs stay atomic, Ray shuts down, one line is printed.
    Raised inside ``ray.get`` it comes out as a plain KeyboardInterrupt (Ray re-raises its
    own), so :func:`sigterm_received` tells the two apart."""


_sigterm_received = False


def sigterm_received() -> bool:
    """Whether a SIGTERM arrived since :func:`stop_cleanly_on_sigterm` was called."""
    return _sigterm_received


def _raise_terminated(signum, frame):
    global _sigterm_received
    _sigterm_received = True
    raise Terminated()


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (called at the CLI's start).
    :func:`ray_session` puts this handler back once Ray has connected: the Ray core installs one
    of its own that dumps a C++ stack trace and aborts the driver (exit 134)."""
    global _sigterm_received
    if threading.current_thread() is threading.main_thread():
        _sigterm_received = False
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def ray_session(config: RayConfig | None = None,
                cluster_env: dict[str, str] | None = None) -> Iterator[None]:
    """Use a running Ray (if this process already joined one), a named cluster, or a local one.
    ``cluster_env`` is the environment of a local cluster's own processes (Serve's controller
    and proxy read settings from it at start); a running or named cluster keeps its own."""
    import ray

    config = config or RayConfig()
    if ray.is_initialized() or config.address or os.environ.get("RAY_ADDRESS"):
        if cluster_env:
            log("the Ray cluster was started elsewhere: it keeps its own environment "
                f"(customir would have set {', '.join(sorted(cluster_env))})")
    if ray.is_initialized():
        yield
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": worker_env()}
    keep_sigterm = (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) is _raise_terminated)
    if address:
        log(f"joining Ray cluster at {address}")
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        # A cluster we start ourselves lives and dies with this process; Ray 2.60's token auth
        # protects shared clusters and only gets in the way here.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        num_cpus = config.num_cpus or os.cpu_count() or 1
        log(f"starting a local Ray cluster with {num_cpus} CPUs")
        with _environment(cluster_env or {}):  # the cluster's processes inherit it
            # "local": a new cluster even when a stale /tmp/ray/ray_current_cluster (left by
            # a `ray start` head that died) names one, which ray.init would otherwise join
            ray.init(address="local", num_cpus=num_cpus, runtime_env=env,
                     include_dashboard=False,
                     log_to_driver=False, configure_logging=False,
                     _system_config={"worker_niceness": config.worker_niceness})
    try:
        if keep_sigterm:  # the CLI's handler, over the ones ray.init just installed
            signal.signal(signal.SIGTERM, _raise_terminated)
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_env() -> dict[str, str]:
    """:data:`WORKER_ENV` less the keys a submitted job's runtime env already sets: Ray refuses
    to start a job's driver whose ``ray.init`` names an env var the job names too, and the
    job's own value is the one its author chose."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {key: value for key, value in WORKER_ENV.items() if key not in taken}


def map_table(table: pa.Table, udf: type, *, constructor_kwargs: dict[str, Any],
              batch_size: int, concurrency: int = 1, num_gpus: float = 0,
              resources: dict[str, float] | None = None,
              restarts: int = WORKER_RESTARTS) -> pa.Table | None:
    """Run ``udf`` (a callable class) over an in-memory table with a pool of ``concurrency`` Ray
    Data actors; return all its rows. UDFs return rows in their output schema plus
    ``skip_reason``/``skip_detail`` columns, so a stage can count every input it did not use
    (see :func:`split_skips`). Each actor holds one CPU, ``num_gpus`` and the custom
    ``resources`` (which is how a stage lands on the nodes its config names). A worker whose
    process dies is restarted ``restarts`` times, and its batches retried there; then the stage
    stops with :class:`WorkerCrashed`."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # The input is handed to Ray as in-memory blocks: read tasks would need CPUs that a full
    # actor pool holds (2 actors on 2 CPUs never get their input), and a stage file is a single
    # block that only one actor would ever see.
    rows_per_block = max(batch_size, -(-table.num_rows // MAX_BLOCKS))
    ds = ray.data.from_arrow([table.slice(start, rows_per_block)
                              for start in range(0, table.num_rows, rows_per_block)] or [table])
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for actor restarts
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(udf, fn_constructor_kwargs=constructor_kwargs,
                            batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
                            num_gpus=num_gpus or None, resources=resources or None,
                            compute=ray.data.ActorPoolStrategy(size=concurrency),
                            max_restarts=restarts)  # tasks: retried until their actor is gone
    # Stage outputs here are small next to their inputs (queries, ids, scores), so they are
    # gathered in the driver and written as one typed file with the manifest.
    try:
        with _worker_deaths_off_console():
            tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    except ray.exceptions.ActorDiedError as exc:
        raise WorkerCrashed(crash_message(udf.__name__, restarts, str(exc))) from None
    return pa.concat_tables(tables) if tables else None


# Where Ray Data logs a failed execution: the executor (with the traceback) and its top-level
# handler (which calls a dead worker "internal code", asks for a bug report, and prints it again).
_RAY_DATA_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state",
                           "ray.data.exceptions")


@contextlib.contextmanager
def _worker_deaths_off_console() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _RAY_DATA_ERROR_LOGGERS]
    for logger in loggers:
        logger.addFilter(_hide_worker_deaths)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(_hide_worker_deaths)


def _hide_worker_deaths(record: logging.LogRecord) -> bool:
    """Keep Ray's records of a dead worker off the console (Ray Data's console handler skips
    records marked ``hide``) but in Ray Data's log file: :class:`WorkerCrashed` says it in one
    line. A record is about a dead worker when it carries, or is logged while handling, an
    ``ActorDiedError``."""
    import ray

    error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    if isinstance(error, ray.exceptions.ActorDiedError):
        record.hide = True
    return True


def crash_message(worker: str, restarts: int, ray_error: str) -> str:
    """What died, how often it was restarted, and where the last dead process's output is.

    >>> text = crash_message("ChatAnswerer", 3, "died.\\n\\tpid: 26378\\n\\tip: 10.0.0.5\\n")
    >>> text.split(". ")[0]
    'ChatAnswerer: its worker process kept dying (restarted 3 times)'
    >>> text.split("; ")[1]  # doctest: +NORMALIZE_WHITESPACE
    'the last was pid 26378 on 10.0.0.5, whose output is worker-*-26378.err in the Ray session
    logs there (/tmp/ray/session_latest/logs by default)'
    """
    pid = re.search(r"\bpid: (\d+)", ray_error)
    ip = re.search(r"\bip: (\S+)", ray_error)
    where = (f"; the last was pid {pid[1]} on {ip[1] if ip else 'its node'}, whose output is "
             f"worker-*-{pid[1]}.err in the Ray session logs there "
             "(/tmp/ray/session_latest/logs by default)" if pid else "")
    times = "without a limit" if restarts < 0 else f"{restarts} time{'s' * (restarts != 1)}"
    return (f"{worker}: its worker process kept dying (restarted {times}). "
            "The stage stopped. Likely a crash in native code (llama.cpp, "
            "torch) or the OOM killer" + where)


def split_skips(table: pa.Table | None, schema: pa.Schema, stage: str,
                item_column: str) -> tuple[pa.Table, list[dict]]:
    """Separate a UDF's output into kept rows (cast to ``schema``) and skip records."""
    import pyarrow.compute as pc

    from customir.schemas import conform

    if table is None:
        return schema.empty_table(), []
    skipped_mask = pc.is_valid(table[SKIP_REASON])
    kept = conform(table.filter(pc.invert(skipped_mask)), schema)
    skipped_rows = table.filter(skipped_mask).select([item_column, SKIP_REASON, SKIP_DETAIL])
    skips = [{"stage": stage, "item": r[item_column], "reason": r[SKIP_REASON],
              "detail": r[SKIP_DETAIL]} for r in skipped_rows.to_pylist()]
    return kept, skips


def with_skip_columns(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(SKIP_REASON, pa.string())).append(
        pa.field(SKIP_DETAIL, pa.string()))
