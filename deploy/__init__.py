"""Deployment helpers: the container health command and the Kubernetes manifest generator.

Kept importable as `deploy.*` from the repository root (the image's working directory is /app,
so `python -m deploy.healthcheck` works inside the container too).
"""
