"""The daily credentials check, in the UI: one asset check per credential of `credentials.yaml`
on the asset `credentials`, green while it works and is not near its rotation or expiry date.

Each credential that is set is also a resource whose value is read through `dg.EnvVar`, so the
UI's resource page names the variable it comes from (never the value) and the value is masked in
every alert. A problem opens one incident for the credential's owner (one alert, a recovery
notice when it clears); the outbox sensor delivers it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import dagster as dg

from automation_pipelines.monitoring.jobs import MONITORING
from automation_pipelines.reliability import credentials as creds
from automation_pipelines.reliability.conditions import Finding, report_findings
from automation_pipelines.reliability.errors import DATABASE, classify_errors
from automation_pipelines.reliability.secrets import register_secret_names

CREDENTIALS_KEY = dg.AssetKey("credentials")
#: The incident kinds the check opens and closes (see `creds.Status.kind`).
KINDS = ("credential_broken", "credential_due", "credential_overdue")


class CredentialValue(dg.ConfigurableResource):
    """One declared credential, its value read through `dg.EnvVar`."""

    value: str


def resource_key(credential: creds.Credential) -> str:
    return f"credential_{credential.name}"


def credential_resources(inventory: creds.Inventory) -> dict[str, CredentialValue]:
    """A resource per declared credential that is set now (an unset one has no value to read;
    the check reports it as not set)."""
    return {
        resource_key(c): CredentialValue(value=dg.EnvVar(c.env))
        for c in inventory.credentials
        if os.environ.get(c.env)
    }


def _now() -> float:
    return time.time()


def build_check(inventory: creds.Inventory, resource_keys: set[str]) -> dg.AssetChecksDefinition:
    """One asset check per credential of `inventory` on the asset `credentials`."""

    @dg.multi_asset_check(
        name="check_credentials",
        specs=[
            dg.AssetCheckSpec(c.check_name, asset=CREDENTIALS_KEY, description=c.describe())
            for c in inventory.credentials
        ],
        required_resource_keys={"alerts", *resource_keys},
        retry_policy=DATABASE.policy,
        pool=MONITORING.pool,
        description="Probes every declared credential with a harmless call and compares its "
        "rotation and expiry dates with today; alerts each owner once per problem.",
    )
    @classify_errors(DATABASE)
    def check_credentials(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        values = {
            c.env: getattr(context.resources, resource_key(c)).value
            for c in inventory.credentials
            if resource_key(c) in resource_keys
        }
        outbox = context.resources.alerts.outbox(context.instance)
        statuses = creds.check_all(
            inventory, now=_now(), environ=values, database_url=outbox.engine
        )
        findings = [
            Finding(
                subject=f"credential:{s.credential.name}",
                kind=f"credential_{s.kind}",
                owner=s.credential.owner,
                automation=MONITORING.name,
                sentence=s.sentence,
            )
            for s in statuses
            if not s.passed
        ]
        opened = report_findings(
            outbox,
            findings,
            KINDS,
            details=lambda _f: [
                "List them and record a rotation: automation-pipelines credentials",
                f"Runbook: {MONITORING.runbook_ref}",
            ],
        )
        context.log.info(f"{len(findings)} credential problem(s), {opened} new alert(s)")
        for status in statuses:
            yield dg.AssetCheckResult(
                asset_key=CREDENTIALS_KEY,
                check_name=status.credential.check_name,
                passed=status.passed,
                severity=dg.AssetCheckSeverity.WARN
                if status.severity == "warn"
                else dg.AssetCheckSeverity.ERROR,
                description=status.sentence,
                metadata={"finding": status.sentence, **status.metadata},
            )

    return check_credentials


INVENTORY = creds.load()
register_secret_names(INVENTORY.variables)
RESOURCES = credential_resources(INVENTORY)

credentials_asset = dg.AssetSpec(
    CREDENTIALS_KEY,
    group_name="monitoring",
    owners=[MONITORING.owner],
    description="The credentials the automations use, as declared in credentials.yaml; each "
    "has an asset check run daily by credentials_check_job.",
)

check_credentials = build_check(INVENTORY, set(RESOURCES))

credentials_check_job = MONITORING.asset_job(
    "credentials_check_job",
    selection=dg.AssetSelection.checks_for_assets(CREDENTIALS_KEY),
    description="Checks every credential of credentials.yaml: set, working (a harmless login or "
    "connection), not near its rotation or expiry date; alerts each owner once per problem.",
)

credentials_daily_schedule = MONITORING.schedule(
    name="credentials_daily_schedule",
    cron_schedule="30 6 * * *",
    job=credentials_check_job,
    description="Checks the credentials every day at 06:30 UTC, before the digest.",
)
