"""A Store: a folder of capture shards plus one columnar index of per-(input, layer, head) summaries.

``capture_dataset(model, dataset, out)`` captures every prompt of a dataset into shards
(written atomically, checksummed, by the driver alone) and indexes each shard with the
analyzers' per-head summaries; ``Store(path)`` opens one for ``lens.analyze`` (which streams
over the shards, one in memory at a time) and for SQL over the index (DuckDB). It sits above
the analyzers because its index is made of their numbers.
"""

from lens.store._store import MANIFEST, Store, capture_dataset, read_dataset

__all__ = ["MANIFEST", "Store", "capture_dataset", "read_dataset"]
