"""The stream worker: consume events, fold them into per-user state, write, commit."""
