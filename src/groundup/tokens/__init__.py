"""Token files: the tokenize stage (``tokenize``) and the windows that feed training and evaluation (``datasets``).

Nothing is imported here, so that ``groundup tokenize`` starts without loading torch.
"""
