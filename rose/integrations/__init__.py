"""In-process trackers: file (no dependencies), MLflow, ClearML, Slack."""
