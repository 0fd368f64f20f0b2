"""The HTTP layer: OpenAI-compatible routes over the registry, scheduler and accounts gate."""
