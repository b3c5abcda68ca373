"""CAN reader Lambda (pinned): reads and decodes CAN frames, publishes batches of signals.

Greengrass loads this module once; the reading loop starts in a thread here, at import, without
blocking it, and opens the CAN bus there (a bus that is not up yet is retried, not fatal). The
handler itself is never invoked with work: the reader has no event sources.
"""

from telemetry.edge.components import CanReaderComponent, LambdaAdapter

adapter = LambdaAdapter(CanReaderComponent, __file__)
adapter.serve()
function_handler = adapter.handle
