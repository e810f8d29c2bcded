"""Serving many GRFT adapters on one copy of a base model: engine, adapter cache, dynamic batcher."""

from grft_core.data.preprocess import text_prefix
from grft_core.serving.batcher import BatchRecord, DynamicBatcher
from grft_core.serving.cache import AdapterCache, CacheEntry, CacheStats
from grft_core.serving.cost import prepare_items
from grft_core.serving.engine import ServedAdapter, ServingEngine

__all__ = [
    "AdapterCache",
    "BatchRecord",
    "CacheEntry",
    "CacheStats",
    "DynamicBatcher",
    "ServedAdapter",
    "ServingEngine",
    "prepare_items",
    "text_prefix",
]
