"""The offline path: event import, backfill, training sets, models, reports."""
