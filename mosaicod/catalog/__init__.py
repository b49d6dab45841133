"""PostgreSQL catalog: connection (db), schema (tables), operations (repo)."""
