"""The read model: an interface (``base``), kept in RocksDB or in memory."""

from streams.projection.base import Applied, Projection, Transaction
from streams.projection.memory import MemoryProjection
from streams.projection.rocksdb import RocksDBProjection

__all__ = ["Applied", "MemoryProjection", "Projection", "RocksDBProjection", "Transaction"]
