"""A model exported by Hugging Face optimum, served by Corral: a check run by hand.

optimum-onnx pins transformers<4.58 and Corral's transformers extra needs 5.x, so the
export runs in its own venv and this check is not in the test suite (which serves a
transformers BERT exported the way optimum exports it, ``tests/integration/
test_onnx_exports.py``). Two steps:

    python3 -m venv /tmp/optimum-venv
    /tmp/optimum-venv/bin/pip install torch==2.13.0 optimum-onnx onnxruntime
    /tmp/optimum-venv/bin/python bench/optimum_export.py export --dir /tmp/opt
    python bench/optimum_export.py check --dir /tmp/opt      # Corral's venv

``export``: a tiny BERT made from its config (no Hub), exported by
``optimum.exporters.onnx.main_export`` (task feature-extraction), and torch's own
answer on a padded batch. ``check``: the export directory imported into Corral, served,
called with tritonclient; prints the largest difference from torch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

# bench/transformers.py would shadow the transformers package: run as a script, this
# directory is the first on the path.
ROOT = Path(__file__).resolve().parent.parent
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export(root: Path) -> None:
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertModel(config).eval()
    model.save_pretrained(root / "bert")
    main_export(str(root / "bert"), output=root / "onnx", task="feature-extraction")
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 100, size=(3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, 5:] = 0
    types = np.zeros_like(ids)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).last_hidden_state.numpy()
    np.savez(
        root / "expected.npz",
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=types,
        last_hidden_state=out,
    )
    print("exported:", sorted(p.name for p in (root / "onnx").iterdir()))


def check(root: Path) -> None:
    import tritonclient.http as httpclient

    from bench.serving import start_corral
    from corral.registry.store import Registry

    expected = np.load(root / "expected.npz")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        registry = Registry(home)
        print("imported", registry.import_path(root / "onnx", "optimum-bert").name)
        registry.close()
        proc, url = start_corral(home, 1, 4, extra_env={"CORRAL_INTRA_OP_THREADS": "1"})
        try:
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            print("metadata:", client.get_model_metadata("optimum-bert"))
            tensors = []
            for name in INPUTS:
                tensor = httpclient.InferInput(name, list(expected[name].shape), "INT64")
                tensor.set_data_from_numpy(expected[name])
                tensors.append(tensor)
            got = client.infer("optimum-bert", tensors).as_numpy("last_hidden_state")
        finally:
            proc.terminate()
            proc.wait(30)
    diff = float(np.abs(got - expected["last_hidden_state"]).max())
    print(f"last_hidden_state {got.shape}: largest difference from torch {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("Corral's answer differs from torch's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("export", "check"))
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "opt")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    export(args.dir) if args.step == "export" else check(args.dir)


if __name__ == "__main__":
    main()
