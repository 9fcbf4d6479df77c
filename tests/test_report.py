"""`curate report` on a real indexed dataset: histograms per concept count and the Markdown summary."""

from __future__ import annotations

import pytest
from fiftyone import ViewField as F
from PIL import Image
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.index.report import write_report
from curation.index.run import index_workspace
from curation.scores import presence as P
from curation.scores.artifacts import ARTIFACT_SCORES


def test_report_writes_histograms_and_summary(candidate_ws):
    ws, candidates = candidate_ws
    index_workspace(ws)
    dataset = ds.open_dataset(ws)
    # one candidate with a known seam, to check the flagged count and the per-group means
    two = [c.candidate_id for c in candidates if c.n_concepts == 2]
    dataset.set_values("seam", dict.fromkeys(two, 0.9), key_field=ds.CANDIDATE_ID)
    three = dataset.match(F(ds.N_CONCEPTS) == 3)
    three.set_values("seam", [0.1] * len(three))

    result = write_report(ws)
    assert result.candidates == 6
    names = {p.rsplit("/", 1)[1] for p in result.figures}
    drawn = [ds.CLIP_T, P.CP_CLIP, *ARTIFACT_SCORES]
    assert names == {f"hist_{s}.png" for s in drawn if dataset.has_field(s)}
    assert {"hist_seam.png", "hist_clip_t.png", "hist_identity_drift.png"} <= names
    for path in result.figures:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200

    text = (ws.root / "reports" / "summary.md").read_text()
    assert "6 candidates (2 concepts: 3, 3 concepts: 3)" in text
    assert "CLIP weights: random" in text and "planned boxes" in text
    assert "| seam | 0.900 | 0.100 | 0.500 |" in text
    assert "| seam | > 0.7 | 3 |" in text
    assert f"| {P.MISSING_CONCEPTS} | at least one | 0 |" in text
    # test candidates are their own paste: no drift anywhere, nothing flagged for it
    assert "| identity_drift | 0.000 | 0.000 | 0.000 |" in text
    assert "| identity_drift | > 0.2 | 0 |" in text


def test_report_cli_and_empty_workspace(candidate_ws, tmp_path):
    ws, _ = candidate_ws
    with pytest.raises(CurateError, match="curate index"):
        write_report(ws)
    index_workspace(ws)
    out = CliRunner().invoke(app, ["report", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "6 candidates" in out.output and (ws.root / "reports" / "summary.md").exists()
