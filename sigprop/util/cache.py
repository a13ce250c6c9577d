"""Bounded memory for module-level caches: nothing sigprop remembers between calls grows without
limit."""

from __future__ import annotations

import collections
import collections.abc
from typing import Hashable


class BoundedSet:
    """A set that keeps its ``size`` most recently added items."""

    def __init__(self, size: int):
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._size = size

    def __contains__(self, item: Hashable) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Hashable) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


class BoundedDict(collections.abc.MutableMapping):
    """A dict that keeps its ``size`` most recently used items (set or read): setting a new key
    beyond ``size`` drops the least recently used one."""

    def __init__(self, size: int):
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._size = size

    def __getitem__(self, key: Hashable):
        value = self._items[key]
        self._items.move_to_end(key)
        return value

    def __setitem__(self, key: Hashable, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __delitem__(self, key: Hashable) -> None:
        del self._items[key]

    def __contains__(self, key) -> bool:
        return key in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
