"""Behavioural triggers: the rules file, its expressions, per-user rule state."""
