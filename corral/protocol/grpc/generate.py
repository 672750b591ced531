"""Regenerate ``predict_v2_pb2.py`` and ``predict_v2_pb2_grpc.py`` from the proto.

The generated modules are committed: they are a pure function of the proto, and
committing them keeps grpcio-tools (a build tool) out of every install. Run from
anywhere, with grpcio-tools installed: ``python corral/protocol/grpc/generate.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[3]

if __name__ == "__main__":
    proto = "corral/protocol/grpc/predict_v2.proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            str(ROOT / proto),
        ]
    )
    sys.exit(code)
