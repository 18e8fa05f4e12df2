"""Fine-tuning and alignment on a model dir: instruction SFT, classifiers, LoRA, DPO, continued pretraining."""
