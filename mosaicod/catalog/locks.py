"""PostgreSQL advisory-lock keys (docs/operations.md#advisory-locks).

Every mosaicod process sharing a catalog must agree on these numbers: they serialise work across
processes and machines.  Keep them unique; never reuse a retired key for something else.
"""

MIGRATION_LOCK_KEY = 0x6D6F7361  # "mosa": held while migrating the schema
REBUILD_LOCK_KEY = 0x6D6F7362  # "mosb": held for a whole rebuild-catalog run
CLEANUP_LOCK_KEY = 777777  # upstream 0.7's key, so mixed deployments serialise their cleanup runs
OPTIMIZER_LEASE_CLASS = 0x6F707469  # "opti": (class, topic_id) held while a topic is rewritten
