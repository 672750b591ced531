"""The embedded demo model: created offline when a server starts with no models.

A new user can run ``corral serve`` and talk to a model at once, with no download.
It is a ~1.3M-parameter Llama with random weights (see ``synthetic``): it exercises
the whole pipeline (chat template, tokenizer, streaming, batching) and says in its
metadata that its output is gibberish.

Run as ``python -m corral.registry.demo HOME`` so the server process never imports
numpy just to write it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from corral.registry.records import ModelRecord
from corral.registry.store import Registry

DEMO_NAME = "demo:latest"


def create_demo_model(home: Path) -> ModelRecord:
    from corral.registry.synthetic import SyntheticSpec, write_model

    spec = SyntheticSpec(
        name="corral-demo",
        n_embd=128,
        n_layer=4,
        n_head=4,
        n_head_kv=4,
        n_ff=256,
        context_length=4096,
        n_merges=300,
        seed=20261123,
    )
    registry = Registry(home)
    try:
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            path = write_model(Path(tmp) / "demo.gguf", spec)
            # The file is gone once imported: the source says what the model is instead.
            label = f"corral demo: synthetic {spec.name}, seed {spec.seed}, random weights"
            return registry.import_file(path, DEMO_NAME, source_label=label)
    finally:
        registry.close()


def ensure_demo_model(home: Path) -> bool:
    """Create the demo model (in a child process) if no model is installed."""
    registry = Registry(home)
    try:
        if not registry.is_empty():
            return False
    finally:
        registry.close()
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "corral.registry.demo", str(home)], check=True)
    return True


if __name__ == "__main__":
    record = create_demo_model(Path(sys.argv[1]))
    print(f"created {record.name} ({record.info.parameters:,} parameters, random weights)")
