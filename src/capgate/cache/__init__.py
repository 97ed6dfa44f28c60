"""The exact response cache (docs/cache.md): an answer given again, from memory, to the
same owner's identical request. key.py: the cache key (pure); memory.py: the bounded
in-memory store; service.py: which requests it serves, what it records."""
