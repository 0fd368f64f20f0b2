"""Onboarding: fidelity against reference vectors, MTEB quality, speed, a dated result and the model status."""
