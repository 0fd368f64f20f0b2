"""The scheduler: one loop per model owns its queue and feeds the engine token-budget batches."""
