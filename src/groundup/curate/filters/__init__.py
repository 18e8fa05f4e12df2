"""Quality filters, one module per family: ``url`` (blocklist), ``language`` (fastText lid.176),
``gopher`` (repetition and quality), ``c4``, ``fineweb``, ``length``.

Each filter is a dataclass whose fields are its parameters (the published thresholds are the
defaults) and whose one method, ``filter(doc) -> (keep, reason)``, decides; the recipe
(:mod:`groundup.curate.recipe`) builds them by name from a list of steps, and the chain
(:mod:`groundup.curate.steps`) counts what each one keeps and drops. Each rule keeps the thresholds
and the order of checks of its published form and the drop reasons of the FineWeb reference
implementation, so the two can be compared document by document. Words are found once per
document, as arrays of lengths and hashes shared by the rules (:class:`~groundup.curate.text.Words`,
cached by the :class:`~groundup.curate.text.Document`); duplicate lines and paragraphs are counted
with sets in C.
"""
