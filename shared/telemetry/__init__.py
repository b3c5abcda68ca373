"""Edge telemetry for vehicles on AWS IoT Greengrass V2.

The package every Lambda function of this project imports: CAN decoding, windowed aggregation,
anomaly detection, upload, the message formats between them, and a local Greengrass runtime to
run all four on a laptop against a recorded CAN log.
"""

__version__ = "0.1.0"
