"""Data curation: web text (WARC/WET, JSONL, Parquet, text) to clean, deduplicated, PII-redacted shards.

One module per concern: ``readers`` (streaming input with file and offset), ``extract``
(main text from HTML), ``text`` (the document record and word splitting), ``steps`` (filters,
formatters and their automatic statistics), ``filters/`` (one module per family: URL, language,
Gopher, C4, FineWeb, length), ``unicode``, ``pii``, ``recipe`` (the list of steps a run applies,
the step registry, the default FineWeb-like recipe), ``hashing`` (word and n-gram hashes),
``dedup`` (exact and MinHash near-duplicates, out of core), ``shards`` and ``executors``
(resumable shard tasks, local processes or Ray), ``writers``, and ``run`` (the ``groundup curate``
stage). ``docs/curate.md`` describes the recipe and how to add a filter.
"""
