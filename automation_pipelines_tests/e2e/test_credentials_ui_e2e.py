"""The credentials check as the UI shows it: the real webserver serves the project's code
location, the daily check runs on its instance, and the webserver's GraphQL (what the asset
page draws) reports each credential's check as failed (red) or passed (green) with its
sentence."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from automation_pipelines.local_stack import free_port
from automation_pipelines_tests.e2e.harness import graphql

pytestmark = pytest.mark.e2e

QUERY = """
{
  assetNodeOrError(assetKey: {path: ["credentials"]}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name }
        }
      }
    }
  }
}
"""


def latest(base_url: str, check: str) -> dict:
    query = f"""
    {{
      assetCheckExecutions(
        assetKey: {{path: ["credentials"]}}, checkName: "{check}", limit: 1
      ) {{ status evaluation {{ severity description }} }}
    }}
    """
    executions = graphql(base_url, query)["assetCheckExecutions"]
    assert executions, f"no execution of {check} is shown"
    return executions[0]


def test_the_ui_shows_each_credential_red_or_green(tmp_path: Path, dagster_processes):
    inventory = tmp_path / "credentials.yaml"
    common = {"account": "svc-sender", "owner": "team:data", "used_by": ["/hooks/x"]}
    inventory.write_text(
        yaml.safe_dump(
            {
                "credentials": {
                    "good_webhook": {
                        "env": "GOOD_HOOK_SECRET",
                        "probe": "webhook_secret",
                        "rotate": "roll it",
                        **common,
                    },
                    "weak_webhook": {
                        "env": "WEAK_HOOK_SECRET",
                        "probe": "webhook_secret",
                        "rotate": "roll it",
                        **common,
                    },
                }
            }
        )
    )
    env = {
        "CREDENTIALS_FILE": str(inventory),
        "GOOD_HOOK_SECRET": "g" * 32,
        "WEAK_HOOK_SECRET": "weak",
    }
    processes = dagster_processes("automation_pipelines.definitions", env=env)
    base_url = processes.start_webserver(free_port())
    checks = graphql(base_url, QUERY)["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in checks} == {"good_webhook_credential", "weak_webhook_credential"}

    # The daily run, as the schedule would start it, on the webserver's own instance.
    from automation_pipelines.monitoring import credentials as check_module
    from automation_pipelines.reliability import credentials as creds
    from automation_pipelines.reliability.alerts import AlertRouter

    loaded = creds.load(inventory)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        resources = check_module.credential_resources(loaded)
        defs = dg.Definitions(
            assets=[check_module.credentials_asset],
            asset_checks=[check_module.build_check(loaded, set(resources))],
            jobs=[
                dg.define_asset_job(
                    "credentials_check_job",
                    selection=dg.AssetSelection.checks_for_assets(check_module.CREDENTIALS_KEY),
                )
            ],
            resources={"alerts": AlertRouter(), **resources},
        )
        job = defs.resolve_job_def("credentials_check_job")
        assert job.execute_in_process(instance=processes.instance).success

    good = latest(base_url, "good_webhook_credential")
    weak = latest(base_url, "weak_webhook_credential")
    assert good["status"] == "SUCCEEDED"
    assert weak["status"] == "FAILED"
    assert weak["evaluation"]["severity"] == "ERROR"
    assert "too short to be safe (4 byte(s)" in weak["evaluation"]["description"]
