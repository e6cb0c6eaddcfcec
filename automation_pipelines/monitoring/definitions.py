"""The monitoring layer's contribution to the code location (sensors that watch all jobs)."""

import dagster as dg

defs = dg.Definitions()
