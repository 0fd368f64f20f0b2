"""This process's one connection to Ray and Serve: a local instance we start, or a cluster we join.

Every ``runtime = "ray"`` model shares it (settings check they name the same
``ray_address``); the first model to load opens it, the last to stop closes it.
A local instance is ours: always a new one (never a cluster ``ray start`` left
running, nor ``RAY_ADDRESS``'s), it runs no dashboard and no Serve HTTP proxy (the
gateway reaches replicas through handles only), and it is shut down with the
server. A joined cluster is not ours: we only disconnect.

Ports. Ray picks free ports for most of its processes, but a few have fixed
defaults that two instances on one machine would both claim (Ray 2.60: the
autoscaler's and the dashboard's metrics on 44217 and 44227, on every address, and
the dashboard agent's HTTP on 52365). For a local instance we move them to free
ports unless the operator set them: the first two through the environment
variables Ray reads (``AUTOSCALER_METRIC_PORT``, ``DASHBOARD_METRIC_PORT``), the
agent's through the start parameters, for which ``ray.init`` has no argument.

Authentication. A new local instance turns on Ray's token auth by default and
writes a token under the home directory. ``RAY_AUTH_MODE``, when set, is
respected as Ray respects it (tests set ``disabled``); the default is kept,
because a local instance still listens on this machine's addresses.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment variables Ray's own processes read for ports with fixed defaults.
PORT_VARIABLES = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")

INSTALL_HINT = "Ray is not installed in this environment: pip install 'gigarouter[ray]'"

_lock = threading.Lock()
_users = 0
_started_here = False


def import_ray():
    """``ray`` and ``ray.serve``, or a clear error naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray, serve


def acquire(address: str | None) -> None:
    """Connect this process to Ray (starting a local instance when ``address`` is None) and start Serve."""
    global _users, _started_here
    ray, serve = import_ray()
    with _lock:
        if _users == 0 and not ray.is_initialized():
            if address is None:
                _start_local(ray)
                _started_here = True
            else:
                ray.init(address=address, namespace="gigarouter", logging_level=logging.WARNING,
                         log_to_driver=False)
                _started_here = False
            # No HTTP proxy: requests come through handles. On a cluster whose Serve already runs
            # (a KubeRay RayService), this keeps its settings and only warns that ours are ignored.
            serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        _users += 1


def release() -> None:
    """One user fewer; the last one shuts down a local instance (Serve, then Ray) or disconnects."""
    global _users, _started_here
    ray, serve = import_ray()
    with _lock:
        _users = max(0, _users - 1)
        if _users or not ray.is_initialized():
            return
        if _started_here:
            serve.shutdown()
        ray.shutdown()
        _started_here = False


def is_local() -> bool:
    """This process started the Ray instance it is connected to."""
    return _started_here


def _start_local(ray) -> None:
    for name in PORT_VARIABLES:
        os.environ.setdefault(name, str(free_port()))
    with _agent_port(free_port()):
        # "local": a new instance, always. Without an address Ray would join the last cluster
        # `ray start` left on this machine, or the one RAY_ADDRESS names.
        ray.init(address="local", namespace="gigarouter", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}})
    log.info("started a local Ray instance (%s CPUs, %s GPUs)", ray.cluster_resources().get("CPU", 0),
             ray.cluster_resources().get("GPU", 0))


def worker_pythonpath() -> str:
    """The replicas import the same gigarouter as this process (a source tree included), then what else was set."""
    import gigarouter

    here = str(Path(gigarouter.__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest])


@contextmanager
def _agent_port(port: int) -> Iterator[None]:
    """Start Ray's dashboard agent on ``port`` instead of its fixed 52365 (no ``ray.init`` argument exists).

    Ray builds its start parameters (``RayParams``) inside ``ray.init``; this supplies the
    agent's port as a default for that one call. Should a later Ray rename the class or the
    parameter, the agent keeps its default port (a clash there only costs the agent's HTTP
    endpoint, which gigarouter does not use) and this logs why.
    """
    try:
        from ray._private import parameter
        original = parameter.RayParams.__init__
    except (ImportError, AttributeError):
        log.warning("Ray's start parameters moved; its dashboard agent keeps port 52365")
        yield
        return
    if "dashboard_agent_listen_port" not in original.__code__.co_varnames:
        log.warning("Ray's start parameters changed; its dashboard agent keeps port 52365")
        yield
        return

    def init(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", port)
        original(self, *args, **kwargs)

    parameter.RayParams.__init__ = init
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
