"""A simulated event log made messy the way real logs are, for backfill tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY = 86_400
T0 = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC


def messy(events: pd.DataFrame) -> pd.DataFrame:
    """Redelivered events, equal times, fields left out, rows shuffled."""
    rng = np.random.default_rng(11)
    out = pd.concat(
        [events, events.sample(frac=0.05, random_state=1)], ignore_index=True
    )
    ties = rng.random(len(out)) < 0.1
    out.loc[ties, "ts"] = out.loc[ties, "ts"].round(-2)
    purchase = (out["event_type"] == "purchase").to_numpy()
    # Purchases stating only price and quantity, and views without a price.
    out.loc[purchase & (rng.random(len(out)) < 0.5), "revenue"] = np.nan
    out.loc[~purchase & (rng.random(len(out)) < 0.1), "price"] = np.nan
    out.loc[rng.random(len(out)) < 0.05, "session_id"] = None
    out.loc[rng.random(len(out)) < 0.05, "category"] = None
    return out.sample(frac=1.0, random_state=5).reset_index(drop=True)


def simulated_events(n_users: int, days: int) -> pd.DataFrame:
    """``n_users`` simulated shoppers over ``days`` from :data:`T0`, made messy."""
    from core.event_files import events_frame
    from segscore.simulator import simulate

    return messy(events_frame(simulate(n_users, T0, T0 + days * DAY, seed=4).events))
