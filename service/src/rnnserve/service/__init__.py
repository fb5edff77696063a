"""rnnserve's server: ONNX Runtime behind the Open Inference Protocol. Never imports torch."""
