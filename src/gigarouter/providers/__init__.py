"""Providers: the one facade between the router and a backend (in-process engine, remote HTTP, Ray Serve)."""
