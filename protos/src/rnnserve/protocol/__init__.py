"""The Open Inference Protocol's gRPC wire side, shared by server and client.

- `messages`: the protobuf messages of protos/ (`inference.*`), built from a compiled
  protoset into a private descriptor pool. Never registering them in protobuf's default pool
  is what lets this package live in one process with tritonclient, whose own copies of the
  same files claim the same names there.
- `rpc`: the GRPCInferenceService's methods: a client stub and the server-side handlers.
- `codec`: numpy arrays <-> tensor data on the wire (raw bytes, typed contents) and request
  parameters.
"""
