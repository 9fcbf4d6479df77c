"""Pivotal tuning: each concept's token as a new row of a text encoder's embedding table, trained.

Every concept gets its export token (`<c-cat>`) added to the tokenizer as one new token, its row
starting at the mean embedding of its class noun's pieces, so training starts from "a cat" rather
than from noise (Custom Diffusion's and diffusers' advanced scripts' initialisation). Only the new
rows train: `zero_frozen_grads` clears every other row's gradient after each backward pass, and the
optimizer gives the table no weight decay, so the base vocabulary stays bit-identical.

The same code serves the SD 1.x/2.x trainer (one encoder), SDXL (both CLIP encoders) and FLUX (its
CLIP encoder): a `TokenTable` is one (tokenizer, encoder) pair and its new ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from curation.core.errors import CurateError
from personalization.data import Export


@dataclass
class TokenTable:
    """The concept tokens added to one (tokenizer, text encoder) pair."""

    tokenizer: object
    text_encoder: object
    token_ids: list[int]

    @property
    def weight(self):
        """The encoder's input embedding table (the parameter the optimizer trains)."""
        return self.text_encoder.get_input_embeddings().weight

    def rows(self):
        """The trained rows, [n_tokens, width], detached float32 on the CPU (what a checkpoint keeps)."""
        return self.weight.detach()[self.token_ids].float().cpu().clone()

    def load_rows(self, rows) -> None:
        """Write saved rows back into the table (resume)."""
        import torch

        with torch.no_grad():
            self.weight[self.token_ids] = rows.to(self.weight.device, self.weight.dtype)

    def zero_frozen_grads(self) -> None:
        """Clear the gradient of every row but the concept tokens' (call between backward and step)."""
        grad = self.weight.grad
        if grad is not None:
            keep = grad[self.token_ids].clone()
            grad.zero_()
            grad[self.token_ids] = keep


def add_concept_tokens(tokenizer, text_encoder, export: Export) -> TokenTable:
    """Add each concept token to the tokenizer, grow the table, start each row at its class noun's mean.

    The whole table is made trainable; `TokenTable.zero_frozen_grads` keeps all but the new rows still.
    """
    import torch

    tokens = [c.token for c in export.concepts.values()]
    clashes = [t for t in tokens if t in tokenizer.get_vocab()]
    if clashes:
        raise CurateError(f"tokens already in the base vocabulary: {', '.join(clashes)}; rename the concepts")
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    new_ids = list(tokenizer.convert_tokens_to_ids(tokens))
    with torch.no_grad():
        for concept, token_id in zip(export.concepts.values(), new_ids, strict=True):
            noun_ids = tokenizer(concept.class_noun, add_special_tokens=False).input_ids
            if not noun_ids:
                raise CurateError(
                    f"class noun {concept.class_noun!r} of {concept.concept_id} tokenizes to nothing"
                )
            weight[token_id] = weight[noun_ids].mean(dim=0)
    weight.requires_grad_(True)
    return TokenTable(tokenizer=tokenizer, text_encoder=text_encoder, token_ids=new_ids)
