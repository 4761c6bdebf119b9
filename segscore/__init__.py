"""The tools on top: the ``segscore`` command, the demo, the simulator, benchmarks."""
