"""The car's wing: everything that runs on the core device beside the CAN bus.

Frame sources and DBC decoding, the four pure cores (reader, aggregator, detector, uploader),
the typed messages between them, the spool, the transports and the configuration, plus
``components``, which wires the cores to Greengrass as Lambda handlers. Only this package (and
``telemetry/__init__.py``) goes into the Lambda zips; nothing here imports ``telemetry.tools``.
"""
