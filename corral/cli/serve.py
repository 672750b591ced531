"""``corral serve``: prepare the data directory, then run the gateway under uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from corral.api.app import create_app
from corral.engines.catalog import Catalog
from corral.registry.demo import ensure_demo_model
from corral.settings import Settings

log = logging.getLogger("corral")


def run_server(settings: Settings, catalog: Catalog | None = None) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every worker call at INFO; that is noise, not information.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.demo_model and ensure_demo_model(settings.home):
        log.info("no models installed: created the demo model 'demo' (random weights)")
    config = uvicorn.Config(
        create_app(settings, catalog),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    server = uvicorn.Server(config)
    log.info("Corral listening on %s (models in %s)", settings.base_url, settings.home)
    server.run()
