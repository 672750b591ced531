"""Worker process entry point: ``python -m corral.worker --model-path ... --port ...``.

The gateway starts one of these per loaded model. It loads the model *before* it
starts listening, so "port answers /health" means "ready". Its stdin is a pipe from
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
    p.add_argument("--model-path", type=Path, required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--context-length", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--flash-attention", choices=["auto", "on", "off"], default="auto")
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

    from corral.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
    from corral.errors import CorralError
    from corral.worker.app import create_worker_app

    config = LlamaCppConfig(
        model_path=args.model_path,
        threads=args.threads,
        slots=args.slots,
        context_length=args.context_length,
        batch_size=args.batch_size,
        flash_attention=args.flash_attention,
    )
    try:
        engine = LlamaCppEngine(config)
    except CorralError as exc:
        print(f"corral-worker: failed to load {args.model_path}: {exc}", file=sys.stderr)
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
