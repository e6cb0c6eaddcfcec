"""What the web images automation contributes to the code location."""

import dagster as dg

from automation_pipelines.automations.web_images import AUTOMATION, execution
from automation_pipelines.automations.web_images.jobs import render_web_images_job
from automation_pipelines.automations.web_images.ops import ASSET_KEY
from automation_pipelines.automations.web_images.resources import PhotoFolders
from automation_pipelines.automations.web_images.sensors import photo_inbox_sensor

web_images_asset = AUTOMATION.spec(
    ASSET_KEY,
    description="Web-ready renditions of the photos dropped in the inbox (WebP and progressive "
    "JPEG at 1600/800/400 px, metadata stripped). Each run records images processed and "
    "quarantined, MB in and out, % saved and seconds.",
)

folders = PhotoFolders.from_env()
resources: dict = {"folders": folders}
if execution.executor_choice() == execution.CELERY:
    resources[execution.STEP_OUTPUTS_KEY] = dg.FilesystemIOManager(
        base_dir=execution.step_outputs_dir(folders.root)
    )

defs = AUTOMATION.definitions(
    assets=[web_images_asset],
    jobs=[render_web_images_job],
    sensors=[photo_inbox_sensor],
    resources=resources,
)
