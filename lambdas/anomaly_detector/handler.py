"""Anomaly detector Lambda: signal batches in, alerts out the moment they are raised."""

from telemetry.component import LambdaAdapter
from telemetry.rules import AnomalyDetectorComponent

adapter = LambdaAdapter(AnomalyDetectorComponent)
function_handler = adapter.handle
