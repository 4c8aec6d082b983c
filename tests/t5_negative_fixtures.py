"""The reference's CFG negative computed independently with stock transformers calls (test helper)."""
from __future__ import annotations

import torch


def stock_t5_empty(folder) -> torch.Tensor:
    """T5("") with plain transformers calls on a FLUX base folder's text_encoder_2 / tokenizer_2:
    the empty prompt padded to 512 tokens (`</s>` then `<pad>`), no attention mask, last hidden state."""
    from transformers import T5EncoderModel, T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2")
    enc = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2").eval()
    ids = tok("", padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 512)
    assert ids[0, 0] == tok.eos_token_id and (ids[0, 1:] == tok.pad_token_id).all()
    with torch.no_grad():
        return enc(input_ids=ids).last_hidden_state
