"""The one code location: every automation's definitions plus the monitoring layer, merged."""

from automation_pipelines import discovery
from automation_pipelines.reliability.secrets import register_resources

# Each `automations/<name>/definitions.py`, found by folder so none can be forgotten; a folder
# that gives none stops the code location, named (`discovery.BrokenAutomations`).
defs = discovery.code_location(discovery.load())
# Every variable a resource reads through dg.EnvVar is masked in alerts and the outbox.
register_resources(defs)
