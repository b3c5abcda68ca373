"""Uploader Lambda: aggregates and alerts in, AWS IoT Core out."""

from telemetry.component import LambdaAdapter
from telemetry.uploader import UploaderComponent

adapter = LambdaAdapter(UploaderComponent)
function_handler = adapter.handle
