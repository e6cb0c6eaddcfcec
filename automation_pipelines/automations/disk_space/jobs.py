"""The disk space job."""

from automation_pipelines.automations.disk_space import AUTOMATION
from automation_pipelines.automations.disk_space.ops import measure_free_space


@AUTOMATION.job(
    name="check_disk_space_job",
    description="Measures free space on the volumes the automations write to and fails while "
    "one of them is below its threshold.",
)
def check_disk_space_job():
    measure_free_space()
