"""Preloaded by the kill tests' fork server: the run code imported and warmed up once."""

from automation_pipelines_tests.automations.web_images import kill_worker

kill_worker.warm_up()
