"""Anomaly detector Lambda: signal batches in, alerts out the moment they are raised."""

from telemetry.edge.components import AnomalyDetectorComponent, LambdaAdapter

adapter = LambdaAdapter(AnomalyDetectorComponent, __file__)
adapter.serve()  # on a core: built now, SIGTERM flushes its open windows
function_handler = adapter.handle
