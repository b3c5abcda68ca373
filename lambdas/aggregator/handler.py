"""Aggregator Lambda: signal batches in, windowed statistics out."""

from telemetry.component import LambdaAdapter
from telemetry.windows import AggregatorComponent

adapter = LambdaAdapter(AggregatorComponent)
function_handler = adapter.handle
