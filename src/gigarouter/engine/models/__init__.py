"""Model code: config dataclass in, tensors out. No I/O, no logging, no environment."""
