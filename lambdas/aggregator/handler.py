"""Aggregator Lambda: signal batches in, windowed statistics out."""

from telemetry.edge.components import AggregatorComponent, LambdaAdapter

adapter = LambdaAdapter(AggregatorComponent, __file__)
adapter.serve()  # on a core: built now, SIGTERM flushes its open windows
function_handler = adapter.handle
