"""Checkpoint evaluations that generate, judge and write auditable results (``mova eval ...``)."""
