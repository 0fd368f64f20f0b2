"""The router: a model is a route over providers, chosen by the caller's preferences, failing over
only between providers whose vector fingerprints match."""
