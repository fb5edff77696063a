"""Python client for rnnserve (and any Open Inference Protocol server): numpy in, numpy out."""
