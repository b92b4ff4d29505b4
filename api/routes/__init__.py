"""One module per area of /api/v1; each defines `router`."""
