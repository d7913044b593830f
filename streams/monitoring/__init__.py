"""The streams app's side of monitoring: metric windows, the rollout controller."""
