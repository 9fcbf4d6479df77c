"""Offline backgrounds are places built from scikit-image's photos, picked by the plan's background text.

Before, they were a flat colour per word with smooth noise on it: the floors of a lawn and of a brick
loft wall had the same featureless texture (high-pass std ~2 grey levels) as every other scene.
"""

from __future__ import annotations

import cv2
import numpy as np

from generators.compose import FALLBACK_TEXTURES, TEXTURES, procedural_background, scene_textures
from generators.compositions import BACKGROUNDS


def _detail(image: np.ndarray) -> float:
    """Grey-level spread of what a 3 px blur removes: a photographed surface has it, a smooth fill does not."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float((grey - cv2.GaussianBlur(grey, (0, 0), 3)).std())


def test_background_text_picks_photographed_surfaces() -> None:
    assert scene_textures("on a wooden table in a sunlit kitchen") == ("wood", "plaster")
    assert scene_textures("on a green lawn in a sunny backyard garden") == ("grass", "sky")
    assert scene_textures("on a grey concrete floor in an industrial loft") == ("plaster", "brick")
    assert scene_textures("floating in outer space") == FALLBACK_TEXTURES  # the documented fallback
    assert scene_textures("a cosy kitchen on a wooden table") == ("wood", "plaster")  # setting first
    assert scene_textures("in a garden on a lawn") == ("grass", "sky")
    assert scene_textures("花園\x00 on a lawn") == ("grass", FALLBACK_TEXTURES[1])
    for text in BACKGROUNDS:  # every rules-planner scene names a known surface and setting
        floor, backdrop = scene_textures(text)
        assert floor in TEXTURES and backdrop in TEXTURES, text
        assert (floor, backdrop) != FALLBACK_TEXTURES, text
    assert {TEXTURES[name][0] for pair in map(scene_textures, BACKGROUNDS) for name in pair} >= {
        "coffee", "grass", "gravel", "brick"
    }  # fmt: skip


def test_background_shows_the_photographed_surface_in_the_words_colours() -> None:
    lawn = procedural_background("on a green lawn in a sunny backyard garden", 256, 256)
    floor, sky = lawn[-64:].reshape(-1, 3).mean(0), lawn[:32].reshape(-1, 3).mean(0)
    assert floor[1] > floor[0] and floor[1] > floor[2], "a green lawn"
    assert sky[2] > sky[0], "a blue sky above it"
    assert _detail(lawn[-64:]) > 6, "blades of grass, not a smooth fill"
    loft = procedural_background("on a grey concrete floor in an industrial loft", 256, 256)
    assert _detail(loft[:96]) > 5, "the brick photo's mortar lines on the wall"


def test_background_is_fixed_by_text_size_and_seed() -> None:
    text = BACKGROUNDS[0]
    first = procedural_background(text, 192, 160, seed=3)
    procedural_background.cache_clear()
    assert first.shape == (160, 192, 3) and first.dtype == np.uint8
    assert np.array_equal(first, procedural_background(text, 192, 160, seed=3))
    assert not np.array_equal(first, procedural_background(text, 192, 160, seed=4))
