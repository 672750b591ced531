"""llama.cpp: GGUF models. ``descriptor`` is the gateway's side (no engine library);
``engine``, ``sampling`` and ``grammar`` run inside the worker process only."""
