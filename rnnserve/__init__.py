"""rnnserve: serve recurrent sequence models over the Open Inference Protocol.

One import namespace holds every part: `rnnserve.service` (the server), `rnnserve.export`
(training and ONNX export, the only part that imports torch), `rnnserve.client`,
`rnnserve.bench` and `rnnserve.protocol` (the wire messages and tensor codec that client and
server share). The repository keeps the parts as top-level folders (`service/`, `export/`,
`client/`, `bench/`); the wheel's build maps them into this package (pyproject.toml).
"""

from pathlib import Path

# In a source checkout the parts are siblings of this folder, not children: let
# `rnnserve.service` find `service/` there. An installed wheel has them inside and skips this.
_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "service").is_dir() and (_CHECKOUT / "service").is_dir():
    __path__.append(str(_CHECKOUT))
