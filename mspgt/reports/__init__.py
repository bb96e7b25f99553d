"""Reports: results JSON, the boundary store, figures, markdown tables and W&B tracking."""
