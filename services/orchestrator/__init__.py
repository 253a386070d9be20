"""Orchestrator service: runs pipelines as jobs with a persistent record and an event stream."""
