"""ServerApp: strategies, central evaluation, run outputs (imports common)."""
