"""The web images job. Its step runs inside the run worker (the in-process executor that
`Automation.job` sets), so a killed worker leaves no step process writing behind it."""

from automation_pipelines.automations.web_images import AUTOMATION
from automation_pipelines.automations.web_images.ops import render_web_images


@AUTOMATION.job(
    name="render_web_images_job",
    description="Turns a batch of inbox photos into web-ready WebP and progressive JPEG "
    "renditions, moves the originals to processed/ and quarantines files that cannot be used.",
)
def render_web_images_job():
    render_web_images()
