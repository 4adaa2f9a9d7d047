"""ClientApp: local training of the client model (imports common only)."""
