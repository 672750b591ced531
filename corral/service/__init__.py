"""Between the APIs and the scheduler: the inference service and the worker client."""
