"""One-token identifiers for the trainers that add no tokens to the tokenizer.

Custom Diffusion, DreamBooth-LoRA advanced (`--token_abstraction`) and `curate train` add each concept's
`<c-x>` to the tokenizer, so it is one token there. Multi-subject DreamBooth, kohya's sd-scripts,
OneTrainer and ai-toolkit add nothing: the CLIP tokenizer splits `<c-coin>` into `<`, `c`, `-`, `coin`,
`>` (the class word itself among them), and `sks1` into `sks` + `1` with every concept sharing `sks`.
For those routes each concept gets an identifier the tokenizer keeps whole, found as the DreamBooth
paper finds its rare tokens: in the tokenizer's own vocabulary, among the last BPE merges (the rarest
words), short and without vowels so that it reads as no word (DreamBooth's `sks` is one of them).

The vocabulary is CLIP's BPE (49,408 tokens), which every Stable Diffusion 1.x/2.x and SDXL text
encoder uses: the merges file ships with `open_clip_torch`, read here without importing it (the
package pulls in torch). Each identifier is checked by running CLIP's BPE on it; tests tokenize every
caption with `transformers`' CLIPTokenizer built from the same file, as the scripts do.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from curation.core.errors import CurateError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2
"""CLIP's tokenizer uses this many merges of the file (49,408 tokens with bytes, byte-words and specials)."""
_SHAPE = re.compile(r"[b-df-hj-np-tv-xz]{3}")
"""Three lowercase consonants: no English word, and no digit that a caption's numbers could touch."""
_AVOID = frozenset({"fck", "fkn", "wtf", "smh", "xxx", "bbw"})
"""Abbreviations among the rare merges that no dataset should train a subject on."""


def bpe_file() -> Path:
    """The CLIP merges file inside the installed open_clip package (not imported: it loads torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise CurateError(
            "open_clip_torch is not installed: it carries the CLIP vocabulary (pip install open_clip_torch)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BPE_FILE


@lru_cache(maxsize=1)
def merge_ranks() -> dict[tuple[str, str], int]:
    """(left, right) -> rank of every merge CLIP's tokenizer uses; a lower rank merges first."""
    with gzip.open(bpe_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")[1 : _MERGES + 1]
    return {tuple(line.split()): rank for rank, line in enumerate(lines)}  # type: ignore[misc]


def bpe(word: str) -> list[str]:
    """CLIP's byte-pair encoding of one lowercase ASCII word, as its tokenizer runs it: the best-ranked
    pair merges everywhere it occurs, until no pair is a merge; the last symbol carries `</w>`."""
    ranks = merge_ranks()
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        best = min(itertools.pairwise(parts), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def is_one_token(word: str) -> bool:
    """Whether CLIP's tokenizer keeps `word` (lowercase ASCII letters) as a single token."""
    return len(bpe(word)) == 1


def rare_words() -> list[str]:
    """Every candidate identifier, rarest first: one-token, three consonants, not an abbreviation to avoid."""
    found = []
    for (left, right), _rank in sorted(merge_ranks().items(), key=lambda item: -item[1]):
        token = left + right
        word = token.removesuffix("</w>")
        if token.endswith("</w>") and _SHAPE.fullmatch(word) and word not in _AVOID and is_one_token(word):
            found.append(word)
    return found


def assign_identifiers(concept_ids: Iterable[str], texts: Iterable[str]) -> dict[str, str]:
    """Concept id -> its one-token identifier, in id order; words already in `texts` are skipped.

    Args:
        concept_ids: The exported concepts.
        texts: Every caption, class noun and background the export writes: an identifier must not be
            a word the data already uses.

    Raises:
        CurateError: more concepts than the vocabulary has rare words for.
    """
    used = {w for text in texts for w in re.findall(r"[a-z0-9]+", text.lower())}
    free = [w for w in rare_words() if w not in used]
    ordered = sorted(concept_ids)
    if len(ordered) > len(free):
        raise CurateError(
            f"{len(ordered)} concepts, but CLIP's vocabulary has only {len(free)} rare one-token words left"
        )
    return dict(zip(ordered, free, strict=False))
