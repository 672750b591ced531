"""The ONNX Runtime engine: tensor models behind the Open Inference Protocol."""
