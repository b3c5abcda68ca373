"""Edge telemetry for vehicles on AWS IoT Greengrass V2.

Two wings: ``telemetry.edge`` is what runs on the car (decoding, aggregation, anomaly detection,
store-and-forward upload, the messages between them, the Lambda wiring) and is all the Lambda
zips carry; ``telemetry.tools`` is the laptop's (local runtime, replay, simulator, packaging,
deployment, command line).
"""

__version__ = "0.1.0"

# Before anything of ours imports python-can: its .mf4 support (asammdf, pandas) loads when an
# .mf4 file is read or written, not in every process that imports cantools (edge/lazymf4.py).
try:
    from telemetry.edge import lazymf4 as _lazymf4
except ModuleNotFoundError as exc:  # the cloud decoder's zip: no telemetry.edge, no python-can
    if exc.name != "telemetry.edge":
        raise
else:
    _lazymf4.install()
