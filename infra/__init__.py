"""How segscore runs: settings, the local stack, the CLI."""
