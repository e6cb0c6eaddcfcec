"""The one code location: every automation's definitions plus the monitoring layer, merged."""

import dagster as dg

from automation_pipelines import discovery
from automation_pipelines.monitoring import definitions as monitoring
from automation_pipelines.reliability.secrets import register_resources


def automation_definitions() -> list[dg.Definitions]:
    """Each `automations/<name>/definitions.py`, found by folder so none can be forgotten; a
    folder that gives none stops the code location, named (`discovery.BrokenAutomations`)."""
    return discovery.load()


defs = dg.Definitions.merge(*automation_definitions(), monitoring.defs)
# Every variable a resource reads through dg.EnvVar is masked in alerts and the outbox.
register_resources(defs)
