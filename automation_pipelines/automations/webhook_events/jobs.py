"""The webhook events jobs: the loader the inbox sensor starts."""

from automation_pipelines.automations.webhook_events import AUTOMATION
from automation_pipelines.automations.webhook_events.ops import load_events


@AUTOMATION.job(
    name="load_webhook_events_job",
    description="Loads a batch of signed webhook events from the inbox into the warehouse "
    "tables (one transaction per chunk, idempotent upsert) and dead-letters events that fail "
    "their schema.",
)
def load_webhook_events_job():
    load_events()
