"""Shared by every side: config, record keys, models, data, partitions, losses.

Imports nothing from the apps or the diffusion service (docs/architecture.md).
"""
