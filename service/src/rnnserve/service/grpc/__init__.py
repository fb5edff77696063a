"""The gRPC front end: message conversion, GRPCInferenceService, Triton's dialect."""
