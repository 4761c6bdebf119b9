"""``segscore bench``: stream, serve and training benchmarks on real components."""
