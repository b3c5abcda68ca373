"""Anomaly detector Lambda: signal batches in, alerts out the moment they are raised."""

from telemetry.edge.components import LambdaAdapter
from telemetry.edge.components import AnomalyDetectorComponent

adapter = LambdaAdapter(AnomalyDetectorComponent)
function_handler = adapter.handle
