"""The personal tokens an export writes, from `[export] token_format`.

The workspace names every concept `<c-{id}>`. Scripts that add the token to the tokenizer (Custom
Diffusion, `curate train`) keep it whole, but scripts that do not (DreamBooth, multi-subject
DreamBooth) see `<c-cat>` as several sub-tokens that include the class word itself; for those a
rare-token form such as `sks{n}` works better. The export rewrites every caption, concept card,
concepts list and command with the chosen tokens, all from the one mapping built here, so they
can never disagree.
"""

from __future__ import annotations

import re

from curation.core.errors import CurateError
from curation.core.records import Concept


def export_tokens(token_format: str, concept_ids: list[str]) -> dict[str, str]:
    """Concept id -> its exported token; {n} counts from 1 in id order.

    Raises:
        CurateError: two concepts would get the same token.
    """
    ordered = sorted(concept_ids)
    tokens = {cid: token_format.format(id=cid, n=n) for n, cid in enumerate(ordered, start=1)}
    if len(set(tokens.values())) != len(tokens):
        raise CurateError(f"[export] token_format {token_format!r} gives two concepts the same token")
    return tokens


def retoken(concepts: dict[str, Concept], token_format: str) -> tuple[dict[str, Concept], dict[str, str]]:
    """The concepts carrying their exported tokens, and workspace token -> exported token."""
    tokens = export_tokens(token_format, list(concepts))
    renamed = {cid: c.model_copy(update={"token": tokens[cid]}) for cid, c in concepts.items()}
    return renamed, {concepts[cid].token: tokens[cid] for cid in concepts}


def rewrite(text: str, replacements: dict[str, str]) -> str:
    """Replace every workspace token in one pass, so a new token equal to another's old one stays put."""
    changed = {old: new for old, new in replacements.items() if old != new}
    if not changed:
        return text
    pattern = re.compile("|".join(re.escape(old) for old in sorted(changed, key=len, reverse=True)))
    return pattern.sub(lambda match: changed[match.group(0)], text)
