"""Real scikit-learn models, trained on its bundled datasets and converted with
skl2onnx, offline: what the onnx engine's tests serve and check answers against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class SklearnModel:
    path: Path
    estimator: Any
    x: np.ndarray[Any, Any]  # sample inputs (float32)


def iris_classifier(directory: Path, *, string_labels: bool = False) -> SklearnModel:
    """A logistic regression on iris: ``output_label`` and a ZipMap of probabilities."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    labels = np.array(["setosa", "versicolor", "virginica"])[y] if string_labels else y
    clf = LogisticRegression(max_iter=1000).fit(x, labels)
    path = directory / ("iris-names.onnx" if string_labels else "iris.onnx")
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    return SklearnModel(path, clf, x)


def digits_classifier(directory: Path) -> SklearnModel:
    """A random forest on the 8x8 digits (64 features, 10 classes)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0).fit(x, y)
    path = directory / "digits.onnx"
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    return SklearnModel(path, clf, x)


def diabetes_regressor(directory: Path) -> SklearnModel:
    """A ridge regression on the diabetes dataset: one FP32 ``variable`` output."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    reg = Ridge().fit(x, y)
    path = directory / "diabetes.onnx"
    path.write_bytes(to_onnx(reg, x[:1]).SerializeToString())
    return SklearnModel(path, reg, x)


def word_ids(directory: Path) -> Path:
    """A graph written by hand with onnx's helpers: a string tensor in (``word``), an
    INT64 id out (``id``) by ONNX-ML's LabelEncoder; unknown words are -1."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        "LabelEncoder",
        ["word"],
        ["id"],
        domain="ai.onnx.ml",
        keys_strings=["guitar", "otter", "caf\u00e9"],
        values_int64s=[1, 2, 3],
        default_int64=-1,
    )
    graph = helper.make_graph(
        [node],
        "words",
        [helper.make_tensor_value_info("word", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("id", TensorProto.INT64, ["N"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)]
    )
    model.ir_version = 8
    path = directory / "words.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@dataclass
class TorchExport:
    path: Path
    module: Any  # the torch module, to check answers against


def torch_mlp(directory: Path, *, dynamo: bool) -> TorchExport:
    """A small PyTorch MLP exported to ONNX with a free batch dimension: by the
    torch.export-based exporter (``dynamo=True``, PyTorch's default since 2.9), or by
    the TorchScript one most published exports were made with."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(-1)
    ).eval()
    path = directory / f"mlp-{'dynamo' if dynamo else 'torchscript'}.onnx"
    example = (torch.randn(2, 6),)
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            module,
            example,
            input_names=["features"],
            output_names=["scores"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
        )
        assert program is not None
        program.save(str(path))
    else:
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=["features"],
            output_names=["scores"],
            dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}},
            dynamo=False,
        )
    return TorchExport(path, module)


def hf_bert(directory: Path) -> TorchExport:
    """A Hugging Face transformers BERT (tiny, random weights, made from its config:
    no Hub) exported as optimum exports encoders: ``input_ids`` and ``attention_mask``
    in, ``last_hidden_state`` out, batch and sequence dimensions free."""
    import torch
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

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapper = LastHidden().eval()
    path = directory / "bert.onnx"
    ids = torch.randint(0, 100, (2, 8))
    torch.onnx.export(
        wrapper,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"},
            "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
        },
        opset_version=17,
        dynamo=False,
    )
    return TorchExport(path, wrapper)


def sklearn_models(directory: Path, *extra: str) -> dict[str, SklearnModel]:
    """The models most tensor tests serve: iris (integer labels), iris-names (string
    labels) and digits; ``extra`` adds ``diabetes``."""
    models = {
        "iris": iris_classifier(directory),
        "iris-names": iris_classifier(directory, string_labels=True),
        "digits": digits_classifier(directory),
    }
    if "diabetes" in extra:
        models["diabetes"] = diabetes_regressor(directory)
    return models
