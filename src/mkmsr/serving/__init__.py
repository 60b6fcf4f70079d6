"""Serving, last in the flow: a checkpoint (:mod:`mkmsr.checkpoint`) -> top-k items for live sessions.

``recommend`` (``Recommender``: external ids in and out, session files) -> ``serve`` (the HTTP
server) with ``serve_observe`` (Prometheus metrics, JSON access log). Imports nothing from
``training``.
"""
