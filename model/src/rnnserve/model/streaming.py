"""Whether a model's sequences may come in pieces, each carried on from the state the last
left (a session), and where not, why: in the words the server refuses a session with and
`rnnserve import` reports at import."""

from __future__ import annotations

from rnnserve.model.describe import TOLERANCE
from rnnserve.model.spec import ModelSpec


def why_not_streamable(spec: ModelSpec) -> str:
    """Why a model that is not streamable takes no session, as the rest of a sentence that
    starts with the model's name, in the words its export metadata justifies."""
    if spec.num_directions == 2:
        return (
            "is bidirectional and cannot stream: its backward direction needs the whole "
            "sequence; send the whole sequence, no 'sequence_id'"
        )
    if not spec.states:
        return (
            "keeps no state between requests, so it has no sequences: send each request on "
            "its own, no 'sequence_id'"
        )
    chunk_error = spec.training.get("chunk_error")
    if isinstance(chunk_error, float) and chunk_error > TOLERANCE:
        return (
            "cannot stream: fed in chunks with its state carried, it answers differently "
            f"from the whole sequence (by {chunk_error:.2g}, measured when it was loaded), as "
            "a bidirectional or attention model does; send the whole sequence, no "
            "'sequence_id'"
        )
    return (
        "is exported as not streamable (its chunked runs were not verified equal to whole "
        "ones); send the whole sequence, no 'sequence_id'"
    )
