"""What the stores hold and how: Feast config, the Redis state layout, reads, writes."""
