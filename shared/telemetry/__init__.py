"""Edge telemetry for vehicles on AWS IoT Greengrass V2.

Two wings: ``telemetry.edge`` is what runs on the car (decoding, aggregation, anomaly detection,
store-and-forward upload, the messages between them, the Lambda wiring) and is all the Lambda
zips carry; ``telemetry.tools`` is the laptop's (local runtime, replay, simulator, packaging,
deployment, command line).
"""

__version__ = "0.1.0"
