"""Data on disk: the shard format, the reader, and ``fit_stream``, each a module of its own.

* ``jaxlin.stream.format``: ``.npy`` shards and their manifest (``generate_shards``,
  ``open_dataset``);
* ``jaxlin.stream.reader``: ``ShardReader``, rows read from the shards;
* ``jaxlin.stream.train``: ``fit_stream``, ``jaxlin.fit`` a block at a time.

Data on disk is handled safely: ``generate_shards`` checks everything before
writing and swaps a complete dataset into place (an existing one only with
``overwrite=True``); every file read is checked first, shard names stay inside
the dataset's folder, and a problem is one ``ValueError`` naming the file (a
NaN or Inf row: the file and the row), never a signal or a divergence.
"""

from jaxlin.stream.format import FORMAT, MANIFEST, Dataset, Shard, generate_shards, open_dataset
from jaxlin.stream.reader import ShardReader, read_rows
from jaxlin.stream.train import ORDERS, RUN_LENGTH, RUNS_PER_BLOCK, epoch_blocks, fit_stream

__all__ = [
    "FORMAT",
    "MANIFEST",
    "ORDERS",
    "RUNS_PER_BLOCK",
    "RUN_LENGTH",
    "Dataset",
    "Shard",
    "ShardReader",
    "epoch_blocks",
    "fit_stream",
    "generate_shards",
    "open_dataset",
    "read_rows",
]
