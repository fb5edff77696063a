"""The gRPC adapter: protobuf conversion, GRPCInferenceService, the aio server."""
