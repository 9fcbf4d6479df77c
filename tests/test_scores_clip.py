"""load_clip / ClipScorer through the real open_clip factory: tiny architecture, random or saved weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from curation.core.errors import CurateError
from curation.scores.clip import clip_t, load_clip


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(5)]


def test_tiny_random_clip_embeds_normalised_batches_deterministically(tiny_clip_name):
    scorer = load_clip(tiny_clip_name, None, device="cpu", batch_size=2)
    assert (scorer.weights, scorer.pretrained, scorer.dim) == ("random", None, 32)
    images = scorer.embed_images(_images())
    texts = scorer.embed_texts(["a cat", "a mug on a table", "x " * 200])
    assert images.shape == (5, 32) and texts.shape == (3, 32)
    assert images.dtype == np.float32
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert scorer.embed_images([]).shape == (0, 32)
    # batching does not change results, and random weights are seeded: a reload embeds identically
    again = load_clip(tiny_clip_name, "", device="cpu", batch_size=5)
    assert np.allclose(again.embed_images(_images()), images, atol=1e-5)


def test_local_checkpoint_file_loads_as_pretrained(tiny_clip_name, tmp_path):
    scorer = load_clip(tiny_clip_name, None, device="cpu")
    with torch.no_grad():  # make the saved weights differ from the seeded random ones
        for param in scorer.model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    expected = scorer.embed_images(_images())
    checkpoint = tmp_path / "tiny.pt"
    torch.save(scorer.model.state_dict(), checkpoint)

    loaded = load_clip(tiny_clip_name, str(checkpoint), device="cpu")
    assert loaded.weights == "pretrained" and loaded.pretrained == str(checkpoint)
    assert np.allclose(loaded.embed_images(_images()), expected, atol=1e-5)
    assert not np.allclose(load_clip(tiny_clip_name, None).embed_images(_images()), expected, atol=1e-3)


def test_unavailable_real_weights_fall_back_to_flagged_random(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # "openai" is a real tag; an empty hub cache and an offline hub make its weights unavailable on
    # any machine, cached or online (these constants are what HF_HUB_CACHE / HF_HUB_OFFLINE set)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    scorer = load_clip("ViT-B-32", "openai", device="cpu")
    assert scorer.weights == "random" and scorer.pretrained == "openai"
    assert scorer.embed_texts(["a dog"]).shape == (1, 512)


def test_bad_model_names_and_paths_are_curate_errors(tiny_clip_name, tmp_path):
    with pytest.raises(CurateError, match="unknown open_clip model"):
        load_clip("ViT-Nope", None)
    with pytest.raises(CurateError, match="unknown pretrained tag"):
        load_clip("ViT-B-32", "opneai")
    with pytest.raises(CurateError, match="does not exist"):
        load_clip(tiny_clip_name, str(tmp_path / "weights.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(CurateError, match="does not load as"):
        load_clip(tiny_clip_name, str(wrong))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CurateError, match="does not load as") as raised:
        load_clip(tiny_clip_name, str(garbage))
    assert "\n" not in str(raised.value) and "weights_only" not in str(raised.value).split("(")[0]


def test_clip_t_follows_clipscore_convention():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    text = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    cosine, score = clip_t(image, text)
    assert cosine == pytest.approx([1.0, -1.0, 0.8])
    assert score == pytest.approx([2.5, 0.0, 2.0])
