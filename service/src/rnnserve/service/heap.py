"""What the server holds for as long as its models stay loaded, kept out of the way of
Python's cyclic garbage collector.

A full collection walks every object the collector tracks. Once the models are loaded those
are some 68,000 (modules, ONNX Runtime's bindings, protobuf's descriptors, the settings)
that live as long as the process or their version: under 64 streams on two cores a full
collection held the event loop 30 to 60 ms every three seconds or so, 2 to 6 µs a step
(docs/performance.md, nineteenth pass); frozen, about a millisecond. So after every change
of the versions loaded, what then lives is collected once and frozen (`gc.freeze`): later
collections walk only the objects made since, a request's among them, which are collected
as before.

Frozen objects are never collected, so each settling first unfreezes them: an unloaded
version's cycles go with the next collection, as they would have without the freeze.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collects what no longer lives and freezes the rest (at start-up and after a version
    loads or unloads: a full collection, tens of milliseconds)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
