"""Prefect flows of the project. An ephemeral Prefect server started by a flow sends Prefect
anonymous usage data by default, and logs an ERROR line on every run where it cannot (offline
machines, closed networks): off here unless the user sets PREFECT_SERVER_ANALYTICS_ENABLED."""
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
