"""Accounts: API keys, credit, exact per-token metering and rate limits."""
