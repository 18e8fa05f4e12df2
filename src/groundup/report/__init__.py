"""The run report: one self-contained HTML page with plots of every stage a run went through.

``groundup report RUN_DIR [RUN_DIR ...]`` (:mod:`groundup.report.run`); the metrics loader
(:mod:`groundup.report.metrics`) reads a ``metrics.jsonl`` of any length in bounded memory.
"""
