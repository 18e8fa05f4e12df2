"""PEFT loads groundup's adapter over the same base in transformers and gives the same logits.

The transformers twin of the base is groundup.interop.hf.to_transformers (the Hugging Face export's
weights); the adapter's names come from groundup.finetune.peft_format, so the two name maps are checked
against each other.
"""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import tiny_config

from groundup.model.lora import LoRAConfig, LoRALinear, apply_lora
from groundup.model.transformer import Transformer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def hf_twin(model: Transformer):
    """The export path's transformers copy of ``model`` (the base PEFT loads the adapter over)."""
    from groundup.interop.hf import to_transformers

    return to_transformers(model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_loads_the_adapter_and_matches_groundup(family, tmp_path):
    from groundup.finetune.peft_format import save_peft_adapter

    torch.manual_seed(0)
    model = Transformer(tiny_config(family, 320)).eval()
    x = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        base_logits = model(x)
        hf = hf_twin(model)
        assert torch.allclose(hf(x).logits, base_logits, atol=1e-4)  # the twin is the same base model
        cfg = LoRAConfig(enabled=True, rank=4, alpha=8)
        apply_lora(model, cfg)
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
        ours = model(x)
    save_peft_adapter(tmp_path, model, cfg, base_model=None)
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = peft_model(x).logits
    assert (ours - base_logits).abs().max() > 1e-2  # the adapter matters
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


def test_peft_loads_a_classifier_adapter_with_its_head(tmp_path):
    from groundup.finetune.classify import add_class_head, class_logits
    from groundup.finetune.peft_format import save_peft_adapter

    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", 320)).eval()
    causal = hf_twin(model)
    hf = transformers.LlamaForSequenceClassification(causal.config.__class__(**{
        **causal.config.to_dict(), "num_labels": 3, "pad_token_id": 0})).eval()
    hf.model.load_state_dict(causal.model.state_dict())
    add_class_head(model, 3)
    cfg = LoRAConfig(enabled=True, rank=4, alpha=8)
    apply_lora(model, cfg, trainable=("lm_head.weight",))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
        x = torch.randint(1, 320, (2, 12))  # no pad id inside: the last token is the last real one
        ours = class_logits(model, x, torch.tensor([12, 12]))
    save_peft_adapter(tmp_path, model, cfg, base_model=None, task_type="SEQ_CLS", extra=("lm_head.weight",))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=x).logits
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
