"""The names Triton's sequence extension and our multi-session requests put on the wire,
shared by server and client.

A request of one sequence carries the parameters SEQUENCE_ID, SEQUENCE_START and
SEQUENCE_END, and may carry SEQUENCE_OFFSET (the time steps its sequence consumed before
it); its response carries SEQUENCE_OFFSET (the steps consumed after it), and a refusal of a
wrong offset carries the server's count as `sequence-offset` (gRPC trailing metadata; a REST
header and JSON field). A multi-session request carries them as control inputs instead,
one value per batch row, and gets SEQUENCE_ERROR (each row's failure, "" for a row that
stepped), SEQUENCE_OFFSET (each row's count) and the response parameter FAILED_ROWS back.
ModelMetadata lists neither control tensors nor state tensors among its inputs, as Triton
lists implicit state: its parameters `control_inputs`, `control_outputs` and
`state_inputs` name them.
"""

SEQUENCE_ID = "sequence_id"
SEQUENCE_START = "sequence_start"
SEQUENCE_END = "sequence_end"
SEQUENCE_OFFSET = "sequence_offset"
SEQUENCE_ERROR = "sequence_error"
FAILED_ROWS = "failed_rows"
# A parameter of a stream's error response (the stream stays open, so no status or trailer
# can say it): the status code name, beside the error's details (`sequence_offset`).
ERROR_CODE = "error_code"
# A detail of a refusal whose step may or may not have been applied (the state store did
# not answer after the write was sent): "unknown". The step's retry with its
# SEQUENCE_OFFSET resolves it (answered again, or applied once); without an offset the
# sequence is refused until a step with one resynchronises it, or it starts again.
SEQUENCE_OUTCOME = "sequence_outcome"
UNKNOWN_OUTCOME = "unknown"

# Control inputs and the datatype each is listed with (sequence_id may also be INT64, or
# BYTES for string ids), and the control outputs.
CONTROL_DATATYPES = {
    SEQUENCE_ID: "UINT64",
    SEQUENCE_START: "BOOL",
    SEQUENCE_END: "BOOL",
    SEQUENCE_OFFSET: "INT64",
}
CONTROL_OUTPUT_DATATYPES = {SEQUENCE_ERROR: "BYTES", SEQUENCE_OFFSET: "INT64"}
STATE_DATATYPE = "FP32"
