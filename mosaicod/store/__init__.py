"""Object store: fsspec access (objstore), key layout v1 (layout), Parquet chunks (chunks), stats."""
