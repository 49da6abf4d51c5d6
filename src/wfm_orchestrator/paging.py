"""Pages of the ordered lists (pure): the items after a key, at most ``limit`` of them.

Every list the API answers is kept in an order by a key that never changes for an item:
a reservation's ``seq``, a step's ``(created, name)``, a configured item's position in
``wfm.conf``. A page holds the items after the key of the previous page's last item, so a
page boundary survives inserts and deletes: the key of a deleted item still says where
the next page starts, and no item is seen twice. The owners of the lists (the resource
manager, the step manager) find the start by bisection and take a page under their own
lock: one consistent snapshot, costing the page's length rather than the list's.

A whole list (the spec's unpaged form: 100,000 items, 23 MB of JSON) is too long to render
under the owner's lock, and its items change in place while it is rendered. A
``Listing`` is its snapshot: the item references copied under the lock (~0.3 ms for
100,000), and a copy of each item made by its owner just before the item first changes
while the listing is open (copy on write). It is rendered in chunks, each under the lock,
so a reader sees every item as it was when the listing was taken, and a change is seen
wholly or not at all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """Some items of an ordered list, and where the next page starts.

    ``next`` is the key of the last item when more items follow (what a client passes
    back as ``after``); None on the last page.
    """

    items: list[T] = field(default_factory=list)
    next: Any = None


def take(ordered: Sequence[T], start: int, limit: int | None,
         keep: Callable[[T], bool] | None, key: Callable[[T], Any]) -> Page[T]:
    """Up to ``limit`` items of ``ordered`` from index ``start`` that ``keep`` accepts (all
    of them when ``limit`` is None).

    The next page's key is given only when another accepted item follows: the last page
    says it is the last, even when it is exactly full.
    """
    items: list[T] = []
    for i in range(start, len(ordered)):
        item = ordered[i]
        if keep is not None and not keep(item):
            continue
        if limit is not None and len(items) == limit:
            return Page(items, key(items[-1]))
        items.append(item)
    return Page(items)


def positional(names: Sequence[str], after: tuple[int, str] | None,
               limit: int | None) -> Page[str]:
    """A page of a configured list (datanodes, locations, flavors), in ``wfm.conf``'s order.

    The key is ``(position, name)``. The next page starts after ``name`` where it is now;
    if a reload removed it, at its old position (where the item that followed it moved).
    A reload between two pages may therefore skip or repeat an item of a configured
    list; its items change only by an administrator's reload.
    """
    start = 0
    if after is not None:
        position, name = after
        try:
            start = names.index(name) + 1
        except ValueError:
            start = min(position, len(names))
    page = take(range(start, len(names)), 0, limit, None, lambda i: (i, names[i]))
    return Page([names[i] for i in page.items], page.next)


class Listing(Generic[T]):
    """A list of ``items`` as it was when taken (their owner holds ``lock`` meanwhile).

    The owner calls ``keep(item)`` under its lock before it changes an item in place;
    ``id`` names an item for that (a key that never changes, e.g. a reservation's seq).
    """

    def __init__(self, items: list[T], lock: AbstractContextManager[Any],
                 ident: Callable[[T], Any]):
        self.items = items
        self._lock = lock
        self._ident = ident
        self._before: dict[Any, T] = {}  # ident -> the item as it was, for changed ones

    def keep(self, item: T) -> None:
        """Under the owner's lock, before ``item`` changes: keep it as it is now."""
        key = self._ident(item)
        if key not in self._before:
            self._before[key] = copy.copy(item)

    def chunks(self, render: Callable[[T], Any], size: int) -> Iterator[list[Any]]:
        """The rendered items, ``size`` at a time, each chunk under the owner's lock;
        ``render`` returns None for an item the list leaves out."""
        items, before, ident = self.items, self._before, self._ident
        for i in range(0, len(items), size):
            with self._lock:
                rendered = [render(before.get(ident(item), item)) for item in items[i:i + size]]
            yield [r for r in rendered if r is not None]
