"""The one code location: every automation's definitions plus the monitoring layer, merged."""

import importlib
import pkgutil

import dagster as dg

from automation_pipelines import automations
from automation_pipelines.monitoring import definitions as monitoring
from automation_pipelines.reliability.secrets import register_resources


def automation_definitions() -> list[dg.Definitions]:
    """Each `automations/<name>/definitions.py`, found by folder so none can be forgotten."""
    folders = sorted(m.name for m in pkgutil.iter_modules(automations.__path__) if m.ispkg)
    return [
        importlib.import_module(f"{automations.__name__}.{name}.definitions").defs
        for name in folders
    ]


defs = dg.Definitions.merge(*automation_definitions(), monitoring.defs)
# Every variable a resource reads through dg.EnvVar is masked in alerts and the outbox.
register_resources(defs)
