"""What both Redis stores (redis_store.py, owned/) use: the client (client.py: one server or
a Redis Cluster, batches, failover, durability), where keys lie and what a session is called
(keys.py), the session index and the Lua that keeps it (index.py), a session as one value
(records.py), the count of sessions by model version (census.py), the notice that Redis lost
its data (generation.py) and the methods that reach Redis, guarded (guard.py)."""
