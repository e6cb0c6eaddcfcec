"""No drift: requirements.lock pins exactly what pyproject.toml needs, with hashes and nothing of
this machine's own indexes; this venv (CI builds it from scratch with `make install`) is exactly
the lock; the lock reader refuses what pip must not be given; every kind of drift gets its
sentence; and the daily check, run as a Dagster job on a fake site-packages with one package at
another version, fails and e-mails the monitoring owner through a real SMTP server, once, then
sends a recovery notice when the version is put back. Also `automation-pipelines drift`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import dagster as dg
import pytest

from automation_pipelines import cli
from automation_pipelines.monitoring import drift
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.settings import runbook_url
from automation_pipelines_tests.alert_peers import deliver_queued

LOCK_TEXT = drift.LOCK_FILE.read_text(encoding="utf-8")
PROJECT = drift.read_project()
HASH = "--hash=sha256:" + "ab" * 32


def pinned(name: str, pyproject_text: str = drift.PYPROJECT.read_text()) -> str:
    """The version pyproject.toml pins `name` to."""
    match = re.search(rf'"{re.escape(name)}==([^"]+)"', pyproject_text)
    assert match, f"{name} is not pinned in pyproject.toml"
    return match.group(1)


def project_with(pyproject_text: str) -> dict:
    return tomllib.loads(pyproject_text)["project"]


def lock_with(text: str, name: str, version: str) -> str:
    """The lock's text with `name` pinned to `version` instead."""
    changed, count = re.subn(rf"(?m)^{re.escape(name)}==\S+ ", f"{name}=={version} ", text)
    assert count == 1, name
    return changed


def without_pin(text: str, name: str) -> str:
    """The lock's text without `name` and its hash lines."""
    changed, count = re.subn(rf"(?ms)^{re.escape(name)}==.*?(?=^\S)", "", text)
    assert count == 1, name
    return changed


def fake_site_packages(folder: Path, packages: dict[str, str]) -> Path:
    """A folder of installed distributions as pip leaves them: one *.dist-info with METADATA."""
    for old in folder.glob("*.dist-info"):
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    for name, version in packages.items():
        info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
    return folder


# -- the real lock, pyproject.toml and venv ---------------------------------------------------


def test_every_line_of_the_lock_is_pinned_with_hashes_and_from_pypi_alone() -> None:
    pins = drift.parse_lock(LOCK_TEXT)
    assert all(pin.hashes for pin in pins.values())
    for local in ("/opt/", "file:", "--find-links", "--index-url", "--extra-index-url"):
        assert local not in LOCK_TEXT
    assert pins["uv"].version == pinned("uv")  # the tool that writes the lock is in it


def test_the_lock_pins_exactly_what_pyproject_requires() -> None:
    pins = drift.parse_lock(LOCK_TEXT)
    assert drift.lock_problems(pins, PROJECT, drift.distributions()) == []


def test_this_venv_is_exactly_the_lock() -> None:
    """CI installs .venv from scratch with `make install`: this is the proof that installing
    from the lock gives exactly the locked versions."""
    pins = drift.parse_lock(LOCK_TEXT)
    assert drift.environment_drift(pins, PROJECT, drift.distributions()) == []


def test_the_makefile_locks_for_the_python_pyproject_requires() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    version = re.search(r"--python-version (\S+)", makefile)
    assert (
        version and drift.python_drift(f"{version.group(1)}.0", PROJECT["requires-python"]) is None
    )
    assert " ".join(f"--extra {extra}" for extra in drift.LOCKED_EXTRAS) in makefile
    assert "pip install --quiet --require-hashes -r $(LOCK)" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile


# -- the lock against pyproject.toml, made to disagree ------------------------------------------

PYPROJECT_TEXT = drift.PYPROJECT.read_text(encoding="utf-8")


def mismatches() -> list:
    dagster = pinned("dagster")
    return [
        pytest.param(
            PYPROJECT_TEXT.replace(f'"dagster=={dagster}"', '"dagster==1.99.0"'),
            LOCK_TEXT,
            f"pyproject.toml requires dagster==1.99.0, the lock has {dagster}: run `make lock`",
            id="pin-changed-in-pyproject",
        ),
        pytest.param(
            PYPROJECT_TEXT,
            lock_with(LOCK_TEXT, "pandas", "3.0.0"),
            f"pyproject.toml requires pandas=={pinned('pandas')}, the lock has 3.0.0",
            id="pin-changed-in-lock",
        ),
        pytest.param(
            PYPROJECT_TEXT.replace(
                '"zstandard==0.25.0",', '"zstandard==0.25.0",\n    "left-pad==1.0",'
            ),
            LOCK_TEXT,
            "pyproject.toml requires left-pad==1.0, the lock does not list it: run `make lock`",
            id="dependency-added",
        ),
        pytest.param(
            PYPROJECT_TEXT.replace('    "aiosmtpd==1.4.6",\n', ""),
            LOCK_TEXT,
            "atpublic 9.0.0 is in the lock, but nothing pyproject.toml requires needs it",
            id="dependency-removed",
        ),
        pytest.param(
            PYPROJECT_TEXT,
            without_pin(LOCK_TEXT, "alembic"),
            "dagster requires alembic",
            id="transitive-missing",
        ),
        pytest.param(
            PYPROJECT_TEXT.replace(
                '"automation_pipelines[bench]",', '"automation_pipelines[bench,docs]",'
            ).replace("bench = [", 'docs = ["mkdocs==1.6.1"]\nbench = ['),
            LOCK_TEXT,
            "pyproject.toml requires mkdocs==1.6.1, the lock does not list it",
            id="self-reference-followed",
        ),
    ]


@pytest.mark.parametrize(("pyproject_text", "lock_text", "expected"), mismatches())
def test_a_lock_that_disagrees_with_pyproject_is_named(
    pyproject_text: str, lock_text: str, expected: str
) -> None:
    assert pyproject_text != PYPROJECT_TEXT or lock_text != LOCK_TEXT
    problems = drift.lock_problems(
        drift.parse_lock(lock_text), project_with(pyproject_text), drift.distributions()
    )
    assert any(expected in problem for problem in problems), problems


def test_an_extra_pyproject_does_not_have_is_an_error() -> None:
    with pytest.raises(drift.LockError, match=r"pyproject\.toml has no extra 'prod'"):
        drift.project_requirements(PROJECT, ["prod"])


# -- the lock reader ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pandas==3.1.1\n", r"line 1: pandas==3.1.1 has no --hash"),
        (f"--find-links /opt/wheels\npandas==3.1.1 {HASH}\n", r"line 1: --find-links has no place"),
        (f"--extra-index-url file:///opt/pypi/simple\npandas==3.1.1 {HASH}\n", "has no place"),
        (f"-e .\npandas==3.1.1 {HASH}\n", r"line 1: -e has no place"),
        (f"pandas>=3.1 {HASH}\n", r"line 1: 'pandas>=3.1 --hash.*' is not `name==version`"),
        (f"pandas @ file:///tmp/pandas.whl {HASH}\n", "is not `name==version`"),
        (f"pandas==3.1.1 ; python_version < '3.12' {HASH}\n", "carries ';', not a hash"),
        (f"pandas==3.1.1 --hash=md5:{'a' * 32}\n", "carries '--hash=md5:"),
        (
            f"pandas==3.1.1 \\\n    {HASH}\nPandas==3.1.1 {HASH}\n",
            r"line 3: Pandas is pinned twice",
        ),
        ("# only a comment\n", "pins no package"),
    ],
)
def test_the_lock_reader_refuses_what_pip_must_not_be_given(text: str, expected: str) -> None:
    with pytest.raises(drift.LockError, match=expected):
        drift.parse_lock(text)


def test_the_lock_reader_follows_continuations_and_skips_comments() -> None:
    text = (
        "# made by make lock\n"
        f"PyYAML==6.0.3 \\\n    {HASH} \\\n    {HASH.replace('ab', 'cd')}\n"
        "    # via automation-pipelines (pyproject.toml)\n"
        f"numpy==2.4.6 {HASH}  # via scikit-image\n"
    )
    pins = drift.parse_lock(text)
    assert sorted(pins) == ["numpy", "pyyaml"]
    assert (pins["pyyaml"].name, pins["pyyaml"].version, pins["pyyaml"].line) == (
        "PyYAML",
        "6.0.3",
        2,
    )
    assert len(pins["pyyaml"].hashes) == 2


def test_a_missing_lock_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(drift.LockError, match=r"there is no lock at .*`make lock` writes it"):
        drift.read_lock(tmp_path / "requirements.lock")


# -- drift sentences -------------------------------------------------------------------------

PINS = drift.parse_lock(f"pandas==3.1.1 {HASH}\nPyYAML==6.0.3 {HASH}\nnumpy==2.4.6 {HASH}\n")
AS_LOCKED = [("pandas", "3.1.1"), ("PyYAML", "6.0.3"), ("numpy", "2.4.6")]


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        (AS_LOCKED, []),
        (
            [("pandas", "3.1.0"), *AS_LOCKED[1:]],
            ["pandas 3.1.0 is installed, the lock says 3.1.1"],
        ),
        (AS_LOCKED[1:], ["pandas is not installed, the lock says 3.1.1"]),
        (
            [*AS_LOCKED, ("left_pad", "1.0")],
            ["left_pad 1.0 is installed, the lock does not list it"],
        ),
        (
            [*AS_LOCKED, ("numpy", "2.4.5")],
            ["numpy is installed twice (2.4.5 and 2.4.6), the lock says 2.4.6"],
        ),
        # Names and versions are compared as pip compares them.
        ([("Pandas", "3.1.1.0"), ("pyyaml", "6.0.3"), ("NumPy", "2.4.6")], []),
        # The project itself and what `python -m venv` brings are not in the lock.
        (
            [
                *AS_LOCKED,
                ("automation_pipelines", "0.1.0"),
                ("pip", "25.3"),
                ("setuptools", "65.5.0"),
            ],
            [],
        ),
    ],
    ids=["as-locked", "other-version", "missing", "added", "twice", "normalized", "not-locked"],
)
def test_each_drift_has_its_sentence(installed: list, expected: list[str]) -> None:
    found = drift.package_drift(PINS, installed, "automation_pipelines")
    assert [d.sentence for d in found] == expected


def test_a_python_outside_requires_python_is_drift() -> None:
    found = drift.python_drift("3.12.1", ">=3.11,<3.12")
    assert (
        found and found.sentence == "Python 3.12.1 is running, pyproject.toml requires >=3.11,<3.12"
    )
    assert drift.python_drift("3.11.7", ">=3.11,<3.12") is None
    with pytest.raises(drift.LockError, match="requires-python 'three'"):
        drift.python_drift("3.11.7", "three")


# -- the daily check, run by Dagster -----------------------------------------------------------


class Environment:
    """A lock and a fake site-packages in tmp_path, and the check's job on a real instance."""

    def __init__(self, tmp_path: Path, instance, router) -> None:
        self.instance = instance
        self.router = router
        self.lock = tmp_path / "requirements.lock"
        self.lock.write_text(f"pandas==3.1.1 {HASH}\nPyYAML==6.0.3 {HASH}\nnumpy==2.4.6 {HASH}\n")
        self.site_packages = tmp_path / "site-packages"
        self.site_packages.mkdir()
        self.defs = dg.Definitions(
            assets=[drift.python_environment],
            asset_checks=[drift.check_python_environment],
            jobs=[drift.python_environment_check_job],
            resources={"alerts": router},
        )

    def install(self, **versions: str) -> None:
        fake_site_packages(self.site_packages, versions)

    def check(self) -> tuple[dg.ExecuteInProcessResult, dg.AssetCheckEvaluation]:
        job = self.defs.resolve_job_def(drift.python_environment_check_job.name)
        config = {"lock_file": str(self.lock), "site_packages": [str(self.site_packages)]}
        result = job.execute_in_process(
            instance=self.instance,
            run_config={"ops": {drift.check_python_environment.op.name: {"config": config}}},
            raise_on_error=False,
        )
        deliver_queued(self.instance, self.router)  # the outbox sensor's next tick
        evaluations = result.get_asset_check_evaluations()
        return result, evaluations[0] if evaluations else None


@pytest.fixture
def environment(tmp_path, sqlite_instance, alert_router, smtp_receiver, monkeypatch):
    # The monitoring owner (team:platform) has no route of its own in the test routes.
    monkeypatch.setenv("TEST_DEFAULT_URLS", smtp_receiver.url)
    return Environment(tmp_path, sqlite_instance, alert_router)


def test_one_package_at_another_version_fails_the_check_and_emails_the_owner(
    environment: Environment, smtp_receiver
) -> None:
    environment.install(pandas="3.1.1", PyYAML="6.0.3", numpy="2.4.6")
    result, evaluation = environment.check()
    assert result.success and evaluation.passed
    assert smtp_receiver.messages == []

    environment.install(pandas="3.1.0", PyYAML="6.0.3", numpy="2.4.6")
    result, evaluation = environment.check()
    assert result.success  # drift is a finding, not a failed run
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description == "pandas 3.1.0 is installed, the lock says 3.1.1"
    [message] = smtp_receiver.messages
    assert message["Subject"] == (
        "[ENVIRONMENT DRIFT] monitoring: pandas 3.1.0 is installed, the lock says 3.1.1"
    )
    body = smtp_receiver.bodies()[0]
    assert "Owner: team:platform" in body
    assert f"Lock: {environment.lock}" in body
    assert "automation-pipelines drift" in body
    runbook = runbook_url("automation_pipelines/monitoring/README.md")
    assert runbook.startswith(("https://", "http://")) and f"Runbook: {runbook}" in body

    result, evaluation = environment.check()  # still drifted: the open incident only counts
    assert not evaluation.passed and len(smtp_receiver.messages) == 1

    environment.install(pandas="3.1.1", PyYAML="6.0.3", numpy="2.4.6")
    result, evaluation = environment.check()
    assert evaluation.passed
    assert [m["Subject"] for m in smtp_receiver.messages][1:] == [
        "[RECOVERED] monitoring: pandas 3.1.0 is installed, the lock says 3.1.1"
    ]


def test_each_drifted_package_is_its_own_alert(environment: Environment, smtp_receiver) -> None:
    environment.install(pandas="3.1.1", numpy="2.4.7", left_pad="1.0")
    _result, evaluation = environment.check()
    assert not evaluation.passed
    assert evaluation.metadata["drifted"].value == [
        "left_pad 1.0 is installed, the lock does not list it",
        "numpy 2.4.7 is installed, the lock says 2.4.6",
        "PyYAML is not installed, the lock says 6.0.3",
    ]
    assert sorted(m["Subject"].split(": ", 1)[1] for m in smtp_receiver.messages) == sorted(
        evaluation.metadata["drifted"].value
    )


def test_a_missing_lock_fails_the_run_and_says_why(environment: Environment) -> None:
    environment.install(pandas="3.1.1")
    environment.lock.unlink()
    result, evaluation = environment.check()
    assert not result.success and evaluation is None
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert f"there is no lock at {environment.lock}" in str(failure.step_failure_data.error)


# -- automation-pipelines drift --------------------------------------------------------------


def test_the_command_passes_on_this_venv(capsys) -> None:
    assert cli.main(["drift"]) == 0
    out = capsys.readouterr().out
    assert "packages of requirements.lock are installed as locked, and nothing else" in out
    assert "✗" not in out


def test_the_command_names_drift_and_exits_1(tmp_path: Path, capsys) -> None:
    pandas = pinned("pandas")
    lock = tmp_path / "requirements.lock"
    lock.write_text(lock_with(LOCK_TEXT, "pandas", "3.0.0"))
    assert cli.main(["drift", "--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert f"✗ pandas {pandas} is installed, the lock says 3.0.0" in out
    assert f"✗ pyproject.toml requires pandas=={pandas}, the lock has 3.0.0" in out


def test_the_command_refuses_a_broken_lock_with_exit_2(tmp_path: Path, capsys) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("pandas==3.1.1\n")
    assert cli.main(["drift", "--lock", str(lock)]) == 2
    assert "pandas==3.1.1 has no --hash" in capsys.readouterr().out
