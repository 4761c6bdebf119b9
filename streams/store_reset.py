"""The signal that the online store lost writes it had acknowledged, and its check."""

from __future__ import annotations

import logging

import redis

log = logging.getLogger("segscore.worker")


class StoreReset(Exception):
    """The online store is a different server process than at the last look.

    A restarted Redis (reloaded from an append-only file fsynced once a second) or
    a replica promoted by a failover may lack writes it acknowledged. States
    loaded from it could then miss events whose offsets this worker has already
    passed, and folding new events into them would make those events look like
    replays. The consumer answers by dropping the cached states and rewinding its
    partitions to their committed offsets, which are never ahead of what the
    store kept (see ``commit_durability_lag_seconds``); the replay re-applies
    exactly what was lost (everything else is a duplicate by offset).
    """


class StoreIdentity:
    """The store's identity (Redis ``run_id``) as last seen, to tell resets.

    None until the first check; checks stop when the server does not tell.
    """

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._known = True

    def check(self, client: redis.Redis) -> None:
        """Raise :class:`StoreReset` if ``run_id`` changed since the last check.

        Blocking; transient errors propagate (the caller retries).
        """
        if not self._known:
            return
        try:
            found = str(client.info("server").get("run_id") or "")
        except redis.ResponseError as exc:
            # INFO renamed away or forbidden by an ACL: the store cannot be told
            # apart from a restarted one, so say so once and stop asking. Any other
            # reply (READONLY, LOADING, ...) is an outage: retried by the caller.
            text = str(exc).lower()
            if not (
                isinstance(exc, redis.exceptions.NoPermissionError)
                or "unknown command" in text
            ):
                raise
            log.warning("cannot tell store restarts apart (INFO: %s)", exc)
            self._known = False
            return
        if not found:
            self._known = False
            return
        previous, self._run_id = self._run_id, found
        if previous is not None and previous != found:
            raise StoreReset(f"store run_id changed from {previous} to {found}")
