"""How segscore runs: settings, the local stack, processes, Kafka topics."""
