"""Collecting human feedback in web pages: a durable label store, task queues with gold
items, live quality and cost, a rate limiter, and the HTTP API with its pages (Ray-free;
`actors/collector.py` serves the API on Ray Serve, `workflows/collect.py` runs it)."""
from alignray.collect.labels import FormSettings, LabelBody, LabelError, Task, make_task
from alignray.collect.store import LabelStore, NewAnnotator, StoreError

__all__ = ["FormSettings", "LabelBody", "LabelError", "LabelStore", "NewAnnotator", "StoreError", "Task", "make_task"]
