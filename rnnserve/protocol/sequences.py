"""The names Triton's sequence extension and our multi-session requests put on the wire,
shared by server and client.

A request of one sequence carries the parameters SEQUENCE_ID, SEQUENCE_START and
SEQUENCE_END. A multi-session request carries them as control inputs instead, one value
per batch row, and gets SEQUENCE_ERROR (each row's failure, "" for a row that stepped) and
the response parameter FAILED_ROWS back. ModelMetadata lists neither control tensors nor
state tensors among its inputs, as Triton lists implicit state: its parameters
`control_inputs` and `state_inputs` name them.
"""

SEQUENCE_ID = "sequence_id"
SEQUENCE_START = "sequence_start"
SEQUENCE_END = "sequence_end"
SEQUENCE_ERROR = "sequence_error"
FAILED_ROWS = "failed_rows"

# Control inputs and the datatype each is listed with (sequence_id may also be INT64, or
# BYTES for string ids).
CONTROL_DATATYPES = {SEQUENCE_ID: "UINT64", SEQUENCE_START: "BOOL", SEQUENCE_END: "BOOL"}
STATE_DATATYPE = "FP32"
