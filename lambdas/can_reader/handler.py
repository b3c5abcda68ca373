"""CAN reader Lambda (pinned): reads and decodes CAN frames, publishes batches of signals.

Greengrass loads this module once; the reading loop starts in a thread here, at import, without
blocking it. The handler itself is never invoked with work: the reader has no event sources.
"""

from telemetry.edge.components import CanReaderComponent, LambdaAdapter

adapter = LambdaAdapter(CanReaderComponent)
adapter.start_pinned()
function_handler = adapter.handle
