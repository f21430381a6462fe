"""Benchmark toolkit: timers and memory meters (measure), result JSON (record), reports (report)."""
