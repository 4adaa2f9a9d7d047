"""Ways to run the app: local simulation launcher (later: deployment scripts)."""
