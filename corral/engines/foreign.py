"""What every engine that runs someone else's server shares: the supervised command.

A foreign server (``llama-server``, ``vllm serve``) ignores the pipe on its stdin that
makes Corral's own workers exit with the gateway, so it runs under
``corral.worker.supervise``, and the gateway translates its answers
(``corral.protocol.upstream``). The ``command`` and ``vllm`` engines both build
their worker this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.engines.descriptor import LaunchContext, WorkerCommand
from corral.protocol.upstream import ForeignServer

SUPERVISOR = "corral.worker.supervise"


def supervised(
    ctx: LaunchContext,
    argv: Sequence[str],
    *,
    grace: float,
    env: Mapping[str, str] | None = None,
    health_path: str = "/health",
    start_timeout: float | None = None,
    served_name: str | None = None,
) -> WorkerCommand:
    """``argv`` as a worker: under the supervisor, answers translated."""
    return WorkerCommand(
        (ctx.python, "-m", SUPERVISOR, "--grace", str(grace), "--", *argv),
        env=dict(env or {}),
        health_path=health_path,
        start_timeout=start_timeout,
        foreign=ForeignServer(served_name=served_name),
    )
