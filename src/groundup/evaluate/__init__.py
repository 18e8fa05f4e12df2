"""Evaluation on local files, offline, with the same score at any batch size.

- ``lm``: batch-invariant log-likelihood scoring of (context, continuation) token pairs; rolling-window
  perplexity, word perplexity and bits per byte as lm-evaluation-harness defines them.
- ``tasks``: loaders (MMLU CSV, HellaSwag / ARC / PIQA / TruthfulQA-MC1 / generic JSONL, generation,
  HumanEval-style code), prompt templates, seeded k-shot examples; bad records named by file and line.
- ``multiple_choice``: acc, acc_norm (by characters), per subject and overall, standard errors.
- ``generation``: generate_until, exact match, BLEU / chrF (sacrebleu), ROUGE (rouge-score), pass@k with
  candidates run under resource limits.
- ``ifeval``: IFEval's 25 verifiable instruction checks, and lm-eval's strict and loose, prompt- and
  instruction-level accuracies.
- ``needle``: needle-in-a-haystack prompts of exact token lengths over a depth × length grid, and their scorer.
- ``judge``: a judge model behind an OpenAI-compatible URL, 1-10 or pairwise with positions swapped.
- ``tokenizer_eval``: fertility, bytes per token, continued words and parity over several tokenizers.
- ``harness``: the lm-evaluation-harness ``LM`` registered as "groundup", and ``groundup lm-eval``.
- ``during_training``: the callback pretraining (and fine-tuning) runs every N steps.
- ``run``: the ``groundup evaluate`` stage (results.json, samples.jsonl, a table).
- ``perplexity``: the token-stream sliding-window NLL pretraining uses for its held-out loss.
"""
