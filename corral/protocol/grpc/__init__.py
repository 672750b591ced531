"""The Open Inference Protocol over gRPC: the proto and its generated modules."""
