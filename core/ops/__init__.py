"""Operating a workbench: health, metrics, backup and restore, moving stores, cleanup."""
