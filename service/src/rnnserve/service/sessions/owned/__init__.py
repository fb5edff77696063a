"""The owned store (`state_store = "owned"`, store.py): states kept by the worker that steps
them, handed over through Redis when a session's request lands on another worker.

Several workers share a port, and a connection stays with the worker that accepted it, so
a session's steps nearly always reach the worker that stepped it last. This store keeps
each session's state in that worker's memory (held.py: a MemoryStore, no Redis round trip
on a step) and records in Redis only who owns it:

- `owner:<session>` names the owning worker (ownership.py); `worker:<id>` exists while that
  worker lives (liveness.py: its sweeper refreshes it; it lapses LIVENESS_S after the
  worker stops doing so).
- A worker asked to step a session that another worker owns pushes a hand-over request
  onto the owner's inbox list (takeover.py). The owner takes the session's turn (so no step
  of it is running), writes the state to `state:<session>`, gives up ownership and answers
  (handover.py); the asking worker takes the state and owns the session from then on. One
  worker at a time steps a session, always from its latest state.
- A clean stop writes every state to `state:<session>` and gives up ownership: a restarted
  server continues the sessions. A worker that crashes loses the states it held, as the
  memory store does (the redis store writes every step and loses none): each worker lists
  the sessions it owns (`owned:<id>`) and is registered in `workers`; once it is dead (its
  supervisor says so at once, `declare_dead`; any worker's sweep notices its liveness
  record lapsed) its sessions are reaped (reaping.py): unindexed, each leaving a tombstone
  in `ended:<session>` that makes its next step ABORTED ("state ... was lost"), and whoever
  waits for it to hand a session over is answered.
- Redis faults: a worker steps the sessions it holds without Redis, so they go on through
  an outage; what needs Redis (a new session, a hand-over, a count) fails UNAVAILABLE. When
  Redis (in a cluster: a bucket's master) comes back without its data (generation.py), each
  worker claims its sessions there again.
- The session index (SessionIndex, as in the redis store) counts the sessions for the
  limits and for `rnnserve_sessions_active`; each owner refreshes its sessions' deadlines,
  and checks that it still owns them, once per sweep rather than once per step.
- Every key of a session, its index entries, and the liveness record, registry and owned
  list its owner is checked by lie in the session's bucket (redis/keys.py: one hash slot
  in a cluster), so that each script touches one slot: a worker's liveness record, its
  registration and the list of what it owns are kept in every bucket (worker.py,
  liveness.py). Inboxes and hand-over replies are single keys, anywhere.
- A session's progress (its step count, and its last step when kept for a retry) travels
  with its state. A session that ends leaves a record of its end in Redis
  (`ended:<session>`, as the redis store does), written with the end's release of
  ownership: a retry of a final step that carried `sequence_offset` finds it from any
  worker. An expiry leaves a tombstone there too.
"""
