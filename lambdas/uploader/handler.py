"""Uploader Lambda (pinned): aggregates and alerts into the durable spool; a sender loop, started
here without blocking the import, forwards them to AWS IoT Core."""

from telemetry.edge.components import LambdaAdapter, UploaderComponent

adapter = LambdaAdapter(UploaderComponent, __file__)
adapter.serve()
function_handler = adapter.handle
