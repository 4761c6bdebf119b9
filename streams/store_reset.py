"""The signal that the online store lost writes it had acknowledged."""


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
