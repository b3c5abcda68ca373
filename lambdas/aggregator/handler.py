"""Aggregator Lambda: signal batches in, windowed statistics out."""

from telemetry.edge.components import AggregatorComponent, LambdaAdapter

adapter = LambdaAdapter(AggregatorComponent)
function_handler = adapter.handle
