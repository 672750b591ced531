"""The transformers engine: Hugging Face safetensors repos, on PyTorch (an extra)."""
