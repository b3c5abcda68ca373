"""The laptop's wing: running, inspecting and shipping the car's code, never run on the car.

The local Greengrass runtime and replays, the drive simulator, the recipes' checks, packaging,
deployment, the benchmarks and the command line. Tools import ``telemetry.edge``; the edge never
imports tools.
"""
