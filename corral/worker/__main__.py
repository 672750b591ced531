"""Worker process entry point: ``python -m corral.worker --engine NAME --model-path ...``.

The gateway starts one of these per loaded model, for every engine whose descriptor
names a ``worker_engine``. The engine is picked by name from the same catalog the
gateway uses, and its parameters arrive as JSON (``--params``), checked here again
by the engine's own parameter model. It loads the model *before* it starts
listening, so "port answers /health" means "ready". Its stdin is a pipe from
the gateway: when that pipe closes (the gateway exited, even by kill -9), the worker
exits at once, so no orphan keeps holding the model's memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

EXIT_LOAD_FAILED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corral-worker", description=__doc__)
    p.add_argument("--engine", default="llamacpp", help="an engine of the catalog, by name")
    p.add_argument("--model-path", type=Path, required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--params", default="{}", help="the engine's parameters, as JSON")
    p.add_argument("--log-level", default="info")
    p.add_argument("--spool-dir", type=Path, default=None, help="where batch results are spooled")
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the gateway uses this to never leave orphans)",
    )
    return p.parse_args(argv)


def watch_parent() -> None:
    """Exit the moment our stdin pipe from the gateway reaches EOF."""

    def wait_for_eof() -> None:
        # os.read on the raw descriptor: a daemon thread blocked in the buffered
        # sys.stdin reader makes CPython abort at interpreter shutdown.
        try:
            while os.read(0, 4096):
                pass
        finally:
            from corral.worker import handoff

            handoff.lock.acquire()  # never between running a request and recording it
            os._exit(0)

    threading.Thread(target=wait_for_eof, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker[{args.model_name}] %(name)s: %(message)s",
    )
    # llama.cpp's own messages: warnings and errors only, unless debugging.
    logging.getLogger("llama.cpp").setLevel(
        logging.DEBUG if args.log_level == "debug" else logging.WARNING
    )
    if args.exit_on_stdin_eof:
        watch_parent()
    from corral.worker import handoff

    handoff.configure(args.spool_dir)

    import uvicorn

    from corral.errors import CorralError
    from corral.worker.app import create_worker_app
    from corral.worker.engines import EngineStartError, start_engine

    try:
        engine = start_engine(args.engine, args.model_path, args.params)
    except (CorralError, EngineStartError) as exc:
        message = exc.message if isinstance(exc, CorralError) else str(exc)
        print(f"corral-worker: failed to load {args.model_path}: {message}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    app = create_worker_app(engine, args.model_name)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    try:
        server.run()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
