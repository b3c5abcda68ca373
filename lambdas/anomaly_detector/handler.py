"""Anomaly detector Lambda: signal batches in, alerts out the moment they are raised."""

from telemetry.edge.components import AnomalyDetectorComponent, LambdaAdapter

adapter = LambdaAdapter(AnomalyDetectorComponent)
function_handler = adapter.handle
