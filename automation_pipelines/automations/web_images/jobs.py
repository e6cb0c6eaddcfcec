"""The web images job. By default its one step runs inside the run worker (the in-process
executor that `Automation.job` sets), so a killed worker leaves no step process writing behind
it. With `WEB_IMAGES_EXECUTOR=celery` (see `execution.py`) the batch is split into parts that
Celery workers render side by side, between a first and a last step that hold the tree's lock."""

from automation_pipelines.automations.web_images import AUTOMATION, execution
from automation_pipelines.automations.web_images.ops import (
    publish_web_images_batch,
    render_web_images,
    render_web_images_part,
    split_web_images_batch,
)

DESCRIPTION = (
    "Turns a batch of inbox photos into web-ready WebP and progressive JPEG renditions, moves "
    "the originals to processed/ and quarantines files that cannot be used."
)

if execution.executor_choice() == execution.CELERY:
    #: The op whose config names the batch (the sensor's run requests configure it).
    BATCH_OP = split_web_images_batch.name

    @AUTOMATION.job(
        name="render_web_images_job",
        description=f"{DESCRIPTION} Its parts run on Celery workers.",
        executor_def=execution.celery_executor(),
    )
    def render_web_images_job():
        parts = split_web_images_batch().map(render_web_images_part)
        publish_web_images_batch(parts.collect())

else:
    BATCH_OP = render_web_images.name

    @AUTOMATION.job(name="render_web_images_job", description=DESCRIPTION)
    def render_web_images_job():
        render_web_images()


def batch_run_config(config: dict) -> dict:
    """The run config of a batch (files, revisit, output settings), whichever executor runs it."""
    return {"ops": {BATCH_OP: {"config": config}}}
