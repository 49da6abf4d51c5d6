"""Pages of the ordered lists (pure): the items after a key, at most ``limit`` of them.

Every list the API answers is kept in an order by a key that never changes for an item:
a reservation's ``seq``, a step's ``(created, name)``, a configured item's position in
``wfm.conf``. A page holds the items after the key of the previous page's last item, so a
page boundary survives inserts and deletes: the key of a deleted item still says where
the next page starts, and no item is seen twice. The owners of the lists (the resource
manager, the step manager) find the start by bisection and take a page under their own
lock: one consistent snapshot, costing the page's length rather than the list's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
