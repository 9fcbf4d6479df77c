"""`curate.toml` loading: whatever the file holds, a config or one `CurateError` line, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.core.config import CurateConfig, dump_config, load_config
from curation.core.errors import CurateError

CURATE = str(Path(sys.executable).with_name("curate"))
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECTIONS = {name: list(field.annotation.model_fields) for name, field in CurateConfig.model_fields.items()}
"""Every section's real setting names, so generated files reach the validators, not only the parser."""

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),  # NaN loads, but never equals itself after the round trip
    st.text(max_size=40),
    st.datetimes(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
sections = st.sampled_from(sorted(SECTIONS)).flatmap(
    lambda section: st.tuples(
        st.just(section),
        st.dictionaries(st.sampled_from(SECTIONS[section]) | st.text(max_size=12), values, max_size=4),
    )
)
documents = st.lists(sections, max_size=4).map(dict) | st.dictionaries(
    st.text(max_size=12), values, max_size=3
)


def _load(data: bytes) -> CurateConfig | CurateError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "curate.toml"
        path.write_bytes(data)
        try:
            return load_config(path)
        except CurateError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path)), str(exc)
            return exc


def load_config_text(text: str) -> CurateConfig:
    outcome = _load(text.encode())
    assert isinstance(outcome, CurateConfig), outcome
    return outcome


@PROPERTY
@given(documents)
def test_any_toml_document_loads_or_is_one_error_line(document: dict) -> None:
    outcome = _load(tomli_w.dumps(document).encode())
    if isinstance(outcome, CurateConfig):  # what loads is a valid config that writes back the same
        assert load_config_text(dump_config(outcome)) == outcome


@PROPERTY
@given(st.text(max_size=300))
def test_any_text_loads_or_is_one_error_line(text: str) -> None:
    _load(text.encode("utf-8", "surrogatepass"))


@PROPERTY
@given(st.binary(max_size=300))
def test_any_bytes_load_or_are_one_error_line(data: bytes) -> None:
    _load(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[layout]\nplanner = "r\xe9gles"\n', "line 2 is not UTF-8 text"),  # a Latin-1 editor
        (b"a = " + b"[" * 5000, "nested too deeply"),
        (b'[layout]\n"max\\nconcepts" = 3\n', r"layout\.'max\\nconcepts': Extra inputs are not permitted"),
        (b"x" * 1_000_001, "1,000,001 bytes is too large"),
        (b'[layout]\nwidth = "wide"\n', "layout.width: Input should be a valid integer"),
        (b"[layout]\nmax_overlap = nan\n", "layout.max_overlap: Input should be a finite number"),
        (b"[index]\ndetection_threshold = -inf\n", "index.detection_threshold: Input should be a finite number"),
    ],
    ids=["latin1", "deep", "newline_key", "huge", "wrong_type", "nan", "inf"],
)
def test_bad_files_name_the_problem_on_one_line(data: bytes, expected: str) -> None:
    outcome = _load(data)
    assert isinstance(outcome, CurateError)
    assert re.search(expected, str(outcome)), outcome


def test_a_folder_where_the_file_should_be(tmp_path: Path) -> None:
    (tmp_path / "curate.toml").mkdir()
    with pytest.raises(CurateError, match="cannot be read"):
        load_config(tmp_path / "curate.toml")


def test_the_cli_shows_one_error_line_for_a_non_utf8_config(tmp_path: Path) -> None:
    assert _curate("init", str(tmp_path / "ws")).returncode == 0
    config = tmp_path / "ws" / "curate.toml"
    config.write_bytes(config.read_bytes().replace(b'planner = "rules"', b'planner = "r\xe8gles"'))
    result = _curate("concepts", "list", "-w", str(tmp_path / "ws"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "is not UTF-8 text" in result.stderr


def _curate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CURATE, *args], check=False, capture_output=True, text=True, timeout=120)
