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
