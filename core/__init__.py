"""The bottom layer: names, store layouts, event contract, feature state and math."""
