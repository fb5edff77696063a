"""Train and export recurrent models to verified ONNX. The only package that imports torch."""
