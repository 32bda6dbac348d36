"""An LRU cache of encoded prompts, so a repeated prompt skips both text encoders."""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from typing import Generic, TypeVar

Embeddings = TypeVar("Embeddings")


@dataclass
class CacheStats:
    """Counts since load; exported as metrics."""

    hits: int = 0
    misses: int = 0


class PromptCache(Generic[Embeddings]):
    """Maps a prompt to its embeddings; `capacity` 0 disables caching."""

    def __init__(self, capacity: int, encode: Callable[[str], Embeddings]) -> None:
        self._capacity = capacity
        self._encode = encode
        self._entries: OrderedDict[str, Embeddings] = OrderedDict()
        self._lock = Lock()
        self.stats = CacheStats()

    def get(self, prompt: str) -> Embeddings:
        """The prompt's embeddings, encoded on a miss."""
        with self._lock:
            if prompt in self._entries:
                self._entries.move_to_end(prompt)
                self.stats.hits += 1
                return self._entries[prompt]
            self.stats.misses += 1
        embeddings = self._encode(prompt)
        if self._capacity > 0:
            with self._lock:
                self._entries[prompt] = embeddings
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
        return embeddings

    def __len__(self) -> int:
        return len(self._entries)
