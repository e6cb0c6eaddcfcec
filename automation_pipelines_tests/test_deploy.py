"""The deployment files, checked as far as this machine can without Docker or a cluster: they
parse; the Helm values carry the limits of dagster.yaml; the Dockerfile installs as the Makefile
does and starts the code server `automation-pipelines prod` starts; every setting file and secret
the code reads is shipped or listed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from automation_pipelines import topology
from automation_pipelines.paths import PACKAGE_ROOT, PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
LOCAL = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(PROJECT_ROOT) for p in DEPLOY.rglob("*.yaml")), ids=str
)
def test_every_deploy_yaml_parses(path: Path) -> None:
    documents = _documents(PROJECT_ROOT / path)
    assert documents and all(isinstance(doc, dict) for doc in documents)


def test_helm_queue_limits_are_those_of_dagster_yaml() -> None:
    queued = VALUES["dagsterDaemon"]["runCoordinator"]
    config = queued["config"]["queuedRunCoordinator"]
    local = LOCAL["run_queue"]
    concurrency = VALUES["concurrency"]

    assert queued["type"] == "QueuedRunCoordinator" and queued["enabled"] is True
    # The chart refuses a run limit set in both places; it lives under `concurrency` only.
    assert "maxConcurrentRuns" not in config and "tagConcurrencyLimits" not in config
    assert concurrency["enabled"] is True
    assert concurrency["runs"] == {
        "maxConcurrentRuns": LOCAL["concurrency"]["runs"]["max_concurrent_runs"]
    }
    assert concurrency["pools"] == {_camel(k): v for k, v in LOCAL["concurrency"]["pools"].items()}
    assert config["dequeueUseThreads"] == local["dequeue_use_threads"]
    assert config["dequeueNumWorkers"] == local["dequeue_num_workers"]
    assert config["dequeueIntervalSeconds"] == local["dequeue_interval_seconds"]


def test_helm_run_monitoring_retries_and_retention_match() -> None:
    daemon = VALUES["dagsterDaemon"]

    assert daemon["runMonitoring"] == {_camel(k): v for k, v in LOCAL["run_monitoring"].items()}
    assert daemon["runRetries"] == {_camel(k): v for k, v in LOCAL["run_retries"].items()}
    assert daemon["runMonitoring"]["maxResumeRunAttempts"] == 0
    retention = VALUES["retention"]
    assert retention["enabled"] is True
    assert (
        retention["schedule"]["purgeAfterDays"]
        == LOCAL["retention"]["schedule"]["purge_after_days"]
    )
    assert retention["sensor"]["purgeAfterDays"] == LOCAL["retention"]["sensor"]["purge_after_days"]
    assert VALUES["telemetry"] == {"enabled": False}


def test_helm_runs_each_run_as_a_kubernetes_job_on_external_postgres() -> None:
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["postgresql"]["enabled"] is False
    assert VALUES["generatePostgresqlPasswordSecret"] is False
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    assert deployment["codeServerArgs"] == [
        "-m",
        topology.MODULE,
        "--location-name",
        topology.LOCATION,
    ]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert deployment["image"]["tag"] != "latest"


def test_helm_names_the_code_location_as_everywhere_else() -> None:
    """The chart names a location after its deployment (a Kubernetes name, with a hyphen) unless
    the webserver's workspace names it: the UI, the daemon and run launches use this name."""
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    workspace = VALUES["dagsterWebserver"]["workspace"]
    assert workspace["enabled"] is True
    assert workspace["servers"] == [
        {"host": deployment["name"], "port": deployment["port"], "name": topology.LOCATION}
    ]
    grpc = yaml.safe_load((DEPLOY / "workspace.grpc.yaml").read_text())["load_from"]
    assert [entry["grpc_server"]["location_name"] for entry in grpc] == [topology.LOCATION]


def test_every_secret_named_in_deploy_files_is_in_the_example() -> None:
    secrets = {
        doc["metadata"]["name"]: doc for doc in _documents(DEPLOY / "k8s" / "secret.example.yaml")
    }
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    receiver = _documents(DEPLOY / "k8s" / "webhook-receiver.yaml")[0]
    container = receiver["spec"]["template"]["spec"]["containers"][0]

    named = {VALUES["global"]["postgresqlSecretName"]}
    named |= {ref["name"] for ref in deployment["envSecrets"]}
    named |= {ref["secretRef"]["name"] for ref in container["envFrom"]}
    assert named <= set(secrets)
    assert "postgresql-password" in secrets[VALUES["global"]["postgresqlSecretName"]]["stringData"]


def test_secret_example_holds_every_webhook_and_alert_secret() -> None:
    env = next(
        doc["stringData"]
        for doc in _documents(DEPLOY / "k8s" / "secret.example.yaml")
        if doc["metadata"]["name"] == "automation-pipelines-env"
    )
    sources = yaml.safe_load((PROJECT_ROOT / "webhook_sources.yaml").read_text())["sources"]
    routes = yaml.safe_load((PROJECT_ROOT / "alert_routes.yaml").read_text())
    needed = {source["secret_env"] for source in sources.values()} | {"BACKUP_RESTIC_PASSWORD"}
    needed |= set(routes["default"]) | {
        name for names in routes["owners"].values() for name in names
    }
    assert needed <= set(env), sorted(needed - set(env))


def test_dockerfile_installs_like_the_makefile() -> None:
    pip = re.compile(r'"pip==([0-9.]+)"')
    assert pip.findall(DOCKERFILE) == pip.findall(MAKEFILE) != []
    # Both install a lock with hashes, then the project alone and editable, so the package finds
    # its settings beside it; the image's drift check reads the lock it was built from.
    assert "pip install --quiet --require-hashes -r $(LOCK)" in MAKEFILE
    assert "pip install --quiet --no-deps -e ." in MAKEFILE
    assert "pip install --no-cache-dir --require-hashes -r requirements-k8s.lock" in DOCKERFILE
    assert "pip install --no-cache-dir --no-deps -e ." in DOCKERFILE
    assert "AUTOMATION_LOCK_FILE=/opt/automation_pipelines/requirements-k8s.lock" in DOCKERFILE
    base = re.search(r"^FROM python:(\d+\.\d+)", DOCKERFILE, re.MULTILINE)
    assert base and base.group(1) == "3.11"
    assert "sys.version_info[:2] == (3, 11)" in MAKEFILE
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.12"
    [k8s] = project["optional-dependencies"]["k8s"]
    postgres = next(d for d in project["dependencies"] if d.startswith("dagster-postgres=="))
    assert k8s.split("==")[1] == postgres.split("==")[1]  # one Dagster release for both


def test_dockerfile_starts_the_code_server_prod_starts() -> None:
    command = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    assert command
    argv = yaml.safe_load(command.group(1))
    services = topology.services(topology.Ports(), Path("workspace.yaml"))
    [code_server] = [service for service in services if service.name == "code server"]
    expected = code_server.argv[1:]
    assert argv[:3] == ["dagster", "code-server", "start"]
    for flag in ("-m", "--location-name"):
        assert argv[argv.index(flag) + 1] == expected[expected.index(flag) + 1]


def test_every_setting_file_the_code_reads_is_copied_into_the_image() -> None:
    read = set()
    for source in PACKAGE_ROOT.rglob("*.py"):
        read |= set(re.findall(r'PROJECT_ROOT / "([\w.-]+\.yaml)"', source.read_text()))
    copied = {
        name
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ")
        for name in line.split()[1:-1]
    }
    assert read, "no setting file found: the pattern is out of date"
    assert read <= copied, sorted(read - copied)
    assert "deploy" in copied  # deploy/postgres/dagster.yaml, the team instance


def test_the_image_carries_every_program_the_automations_run() -> None:
    apt = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", DOCKERFILE, re.S)
    assert apt, "the Dockerfile installs no Debian packages"
    packages = set(apt.group(1).replace("\\", " ").split())
    # pg_dump (PostgreSQL backup sources), restic (the backups' repository), ssh (sftp: ones).
    assert {"postgresql-client", "restic", "openssh-client"} <= packages, packages
