"""Data, first in the flow: raw logs in, the prepared on-disk artifact out, and batches from it.

``sources`` (JDATA-demo layout, generic CSV / Parquet) · ``raw_formats`` (the paper's raw public
datasets) · ``recbole_files`` (RecBole atomic files in and out) -> ``prepare`` (the artifact) ->
``dataset`` (the artifact, memory-mapped) -> ``batching`` (padded tensors); ``synthetic`` writes
raw logs for the demo and the tests. Imports nothing from ``training`` or ``serving``.
"""
