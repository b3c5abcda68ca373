"""The team's AWS account side: what reads the aggregates payloads the vehicles send."""
