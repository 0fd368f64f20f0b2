"""The Ray Serve runtime (``runtime = "ray"``): a model's replicas on Ray, behind the provider facade.

- ``replica``: what runs in each replica (the in-process runtime: loader, scheduler,
  engine) and the messages that cross the handle.
- ``deployment``: the gateway's side of the life cycle (deploy or attach, wait,
  fetch the recipe, delete).
- ``provider``: ``RayProvider``, which sends prepared calls through the handle and
  retries those a lost replica held.
- ``cluster``: this process's one connection to Ray (a local instance or a cluster).

Ray is an optional dependency (``pip install 'gigarouter[ray]'``); it is imported
only when a ``runtime = "ray"`` model loads.
"""
