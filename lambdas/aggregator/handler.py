"""Aggregator Lambda: signal batches in, windowed statistics out."""

from telemetry.edge.components import LambdaAdapter
from telemetry.edge.components import AggregatorComponent

adapter = LambdaAdapter(AggregatorComponent)
function_handler = adapter.handle
