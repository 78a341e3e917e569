"""The cluster backend (``[store] backend = "cluster"``, docs/scale.md).

Several estafeta nodes share one PostgreSQL database (accounts, mailbox
indexes, queue, counters) and one object store for message bodies
(S3-compatible, or the database itself for small clusters). This package is
the layer that talks to them: connection pool and migrations
(``database``, ``schema``), bodies (``blobs``), leases and shared counters.
It sits below the store, auth, queue and policy layers, which build the
cluster forms of their interfaces on it; sessions never import it.
"""
