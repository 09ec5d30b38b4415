"""Operational tooling for agentfleet: local services used offline, in tests and benchmarks."""
