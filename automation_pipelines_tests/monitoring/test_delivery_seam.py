"""Who may deliver alerts: inside Dagster only alert_outbox_sensor, so that runs and the other
sensors queue and return and a channel that hangs holds none of them; outside it, the watchdog
run by cron, the supervisor and the operator's commands, through `monitoring.outside`."""

from __future__ import annotations

import ast
from pathlib import Path

import automation_pipelines

PACKAGE = Path(automation_pipelines.__file__).parent

#: The delivery functions: the outbox's, and the apprise send it calls as its `sender`.
DELIVERING = {"deliver_due", "send_apprise"}

#: (module, function) pairs that may call them.
ALLOWED = {
    ("monitoring/alerting.py", "alert_outbox_sensor"),
    ("monitoring/outside.py", "deliver_now"),
    ("monitoring/outside.py", "send_directly"),
}


def delivery_calls(source: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of every call to a delivery function in `source`, by name or
    attribute, and of every import that renames one (which would hide its calls)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in DELIVERING:
                    found.append((function, child.lineno))
            if isinstance(child, ast.ImportFrom | ast.Import):
                for alias in child.names:
                    if alias.name in DELIVERING and alias.asname not in (None, alias.name):
                        found.append((f"import as {alias.asname}", child.lineno))
            visit(child, inner)

    visit(ast.parse(source), "<module>")
    return found


def test_only_the_outbox_sensor_and_the_outside_paths_deliver() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for function, line in delivery_calls(path.read_text()):
            if (module, function) not in ALLOWED:
                offenders.append(f"{module}:{line} in {function}")
    assert offenders == []


def test_the_rule_sees_each_way_of_calling() -> None:
    source = """
from automation_pipelines.reliability.routes import send_apprise as quietly

def op(context, alerts):
    alerts.outbox(context.instance).deliver_due(budget_seconds=30)

class Sensor:
    def tick(self, outbox):
        outbox.deliver_due()
        send_apprise("json://x", "t", "b")

def alert_outbox_sensor(context, alerts):
    alerts.outbox(context.instance).deliver_due()
"""
    assert delivery_calls(source) == [
        ("import as quietly", 2),
        ("op", 5),
        ("tick", 9),
        ("tick", 10),
        ("alert_outbox_sensor", 13),
    ]
