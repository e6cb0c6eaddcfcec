"""Watches every automation from above: failures, silence, runaway loops."""
