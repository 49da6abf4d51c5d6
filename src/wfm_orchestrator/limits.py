"""Limits per user and per Slurm account: what each holds, and whether a demand fits.

Like Slurm's QOS and association limits, both apply: a reservation must fit its user's
limit (``Limit=<user>`` over ``Limit=default``) and its account's (``Limit=account:<name>``,
the account being the ``Account`` record that lists the user), each summed over the
reservations holding resources (FREE or ALLOCATED). Pure bookkeeping, no I/O and no
lock: the resource manager calls it under its own lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter

from .config import Config, Limit
from .model import ReserveRequest

# Every amount is (cores, memory MB, storage MB, services), in this order.
LABELS = ("cores", "MB of memory", "MB of storage", "services")
_NOTHING = (0, 0, 0, 0)
_SHAPE = attrgetter("user", "servers", "cores", "msize", "ssize")


def demand(req: ReserveRequest) -> tuple[int, int, int, int]:
    """What ``req`` holds once placed: servers x its per-server demand, and one service."""
    n = req.servers
    return n * req.cores, n * req.msize, n * req.ssize, 1


def bounds(limit: Limit) -> tuple[int | None, int | None, int | None, int | None]:
    return limit.cores, limit.msize, limit.ssize, limit.services


def _add(table: dict[str, list[int]], key: str, amounts: Sequence[int], sign: int) -> None:
    used = table.setdefault(key, [0, 0, 0, 0])
    for i, amount in enumerate(amounts):
        used[i] += sign * amount
    if not any(used):
        del table[key]  # a user or an account holding nothing is not kept


class Usage:
    """What each user and each Slurm account holds, checked against their Limit records."""

    def __init__(self, config: Config):
        # The running configuration: a reload changes it in place (config.adopt), and the
        # resource manager then calls regroup().
        self.config = config
        self._users: dict[str, list[int]] = {}
        self._accounts: dict[str, list[int]] = {}

    def add(self, req: ReserveRequest) -> None:
        """``req`` took its resources."""
        self._change(req, 1)

    def add_all(self, requests: Iterable[ReserveRequest]) -> None:
        """Every one of ``requests`` took its resources (a start): summed per user first."""
        # Counted per (user, shape) in C first: a user's services mostly share a few
        # shapes, and a start sums 100,000 of them (a loop in Python took 0.06 s).
        per_user: dict[str, list[int]] = {}
        for (user, n, cores, msize, ssize), count in Counter(map(_SHAPE, requests)).items():
            used = per_user.get(user)
            if used is None:
                used = per_user[user] = [0, 0, 0, 0]
            used[0] += count * n * cores
            used[1] += count * n * msize
            used[2] += count * n * ssize
            used[3] += count
        for user, used in per_user.items():
            _add(self._users, user, used, 1)
            account = self.config.account_of_user.get(user)
            if account is not None:
                _add(self._accounts, account, used, 1)

    def remove(self, req: ReserveRequest) -> None:
        """``req`` gave its resources back."""
        self._change(req, -1)

    def _change(self, req: ReserveRequest, sign: int) -> None:
        amounts = demand(req)
        _add(self._users, req.user, amounts, sign)
        account = self.config.account_of_user.get(req.user)
        if account is not None:
            _add(self._accounts, account, amounts, sign)

    def regroup(self) -> None:
        """Sum the users' holdings per account again, after a reload changed the Account
        records: a later release is then taken from the account it now counts in."""
        self._accounts = {}
        for user, used in self._users.items():
            account = self.config.account_of_user.get(user)
            if account is not None:
                _add(self._accounts, account, used, 1)

    def held(self, user: str) -> tuple[int, ...]:
        return tuple(self._users.get(user, _NOTHING))

    def held_by_account(self, account: str) -> tuple[int, ...]:
        return tuple(self._accounts.get(account, _NOTHING))

    def _limits(self, user: str) -> list[tuple[str, Limit, Sequence[int]]]:
        """(whose, bounds, held) of each limit ``user`` is under: the user's own first."""
        out: list[tuple[str, Limit, Sequence[int]]] = []
        limit = self.config.limit_for(user)
        if limit is not None:
            out.append((f"{user}'s limit", limit, self._users.get(user, _NOTHING)))
        account, limit = self.config.account_limit_for(user)
        if limit is not None:
            out.append((f"account {account}'s limit", limit,
                        self._accounts.get(account, _NOTHING)))
        return out

    def over(self, req: ReserveRequest) -> str:
        """'' when ``req`` fits every limit of its user on top of what is held; else the
        first bound it would pass, named (a queued reservation's status says it)."""
        if not self.config.limits:
            return ""
        asked = demand(req)
        for whose, limit, held in self._limits(req.user):
            for label, bound, h, a in zip(LABELS, bounds(limit), held, asked, strict=True):
                if bound is not None and h + a > bound:
                    return (f"{whose}: {h} {label} held + {a} asked > {bound} "
                            f"(Limit={limit.name} in {self.config.path})")
        return ""

    def beyond(self, req: ReserveRequest) -> str:
        """'' unless ``req`` alone passes a limit of its user (it would wait for ever):
        then that limit, named."""
        if not self.config.limits:
            return ""
        asked = demand(req)
        for whose, limit, _ in self._limits(req.user):
            for label, bound, a in zip(LABELS, bounds(limit), asked, strict=True):
                if bound is not None and a > bound:
                    return (f"{whose}: it asks {a} {label}, the limit is {bound} "
                            f"(Limit={limit.name} in {self.config.path})")
        return ""


__all__ = ["LABELS", "Usage", "bounds", "demand"]
