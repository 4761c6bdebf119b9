"""The Feast repository: entities, sources, feature views and feature services."""
