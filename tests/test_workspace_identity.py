"""One workspace, one identity: the FiftyOne dataset and the Label Studio project follow the workspace
id in curate.toml, not the folder name, so same-named workspaces never share and a renamed one keeps
its dataset."""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import load_config
from curation.core.errors import CurateError
from curation.core.workspace import Workspace
from curation.index.run import index_workspace
from curation.review.project import project_marker
from tests.fixtures.candidate_workspace import index_test_workspace, write_candidates


def test_same_folder_name_in_two_places_gives_two_datasets(tmp_path, tiny_clip_name):
    import fiftyone as fo

    first = index_test_workspace(tmp_path / "alice" / "pets", tiny_clip_name)
    second = index_test_workspace(tmp_path / "bob" / "pets", tiny_clip_name)
    assert first.workspace_id != second.workspace_id
    assert first.workspace_id.startswith("pets-")
    assert ds.dataset_name(first) != ds.dataset_name(second)
    assert project_marker(first) != project_marker(second)

    write_candidates(first, 3, seed=1)
    write_candidates(second, 3, seed=1)  # same candidate ids: content hashes of the same records
    assert index_workspace(first).added == 3
    assert index_workspace(second).added == 3  # not "3 unchanged" in the other user's dataset
    for ws in (first, second):
        dataset = fo.load_dataset(ds.dataset_name(ws))
        assert len(dataset) == 3
        assert all(path.startswith(str(ws.root) + "/") for path in dataset.values("filepath"))


def test_renamed_workspace_keeps_its_dataset_and_project(tmp_path, tiny_clip_name):
    ws = index_test_workspace(tmp_path / "pets", tiny_clip_name)
    write_candidates(ws, 3)
    index_workspace(ws)
    name, marker = ds.dataset_name(ws), project_marker(ws)

    renamed = Workspace.open(ws.root.rename(tmp_path / "pets-2026"))
    assert (ds.dataset_name(renamed), project_marker(renamed)) == (name, marker)
    report = index_workspace(renamed)
    assert (report.added, report.unchanged, report.moved) == (0, 3, 3)  # only the paths are rewritten
    dataset = ds.open_dataset(renamed)
    assert all(path.startswith(str(renamed.root) + "/") for path in dataset.values("filepath"))


def test_copied_workspace_shares_the_identity_of_its_original(tmp_path, tiny_clip_name):
    ws = index_test_workspace(tmp_path / "pets", tiny_clip_name)
    copy = Workspace.open(shutil.copytree(ws.root, tmp_path / "pets-backup"))
    assert copy.workspace_id == ws.workspace_id  # a copy is the same project (a backup, a move)


def test_workspace_from_before_ids_keeps_its_folder_named_dataset(tmp_path):
    root = tmp_path / "pets"
    root.mkdir()
    (root / "curate.toml").write_text('# my notes\n[index]\nclip_model = "ViT-B-32"\n')

    ws = Workspace.open(root)
    assert ws.workspace_id == "pets" and ds.dataset_name(ws) == "curate-pets"  # the name it always had
    text = ws.config_path.read_text()
    assert text.startswith("# my notes\n[index]") and load_config(ws.config_path).workspace.id == "pets"

    renamed = Workspace.open(root.rename(tmp_path / "pets-old"))  # written down: survives a rename
    assert ds.dataset_name(renamed) == "curate-pets"
    assert renamed.config_path.read_text() == text


def test_curate_init_writes_a_fresh_id(tmp_path):
    runner = CliRunner()
    for parent in ("a", "b"):
        result = runner.invoke(app, ["init", str(tmp_path / parent / "pets")])
        assert result.exit_code == 0, result.output
    ids = {load_config(tmp_path / p / "pets" / "curate.toml").workspace.id for p in ("a", "b")}
    assert len(ids) == 2 and all(i.startswith("pets-") for i in ids)
    again = runner.invoke(app, ["init", str(tmp_path / "a" / "pets")])  # re-init keeps the id
    assert again.exit_code == 0
    assert load_config(tmp_path / "a" / "pets" / "curate.toml").workspace.id in ids


def test_a_pre_id_workspace_another_account_cannot_write_is_a_clear_error():
    """Opening a pre-id workspace writes its id; where that is not allowed, say what to add, no traceback.

    The other account runs in a forked child (setuid), since this machine's interpreter lives in a
    folder only root can reach."""
    if os.geteuid() != 0:
        pytest.skip("running as another account needs root")
    folder = Path(tempfile.gettempdir()) / f"curate-readonly-{uuid.uuid4().hex[:10]}"
    (folder / "pets").mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "pets").chmod(0o755)
    (folder / "pets" / "curate.toml").write_text("[layout]\nseed = 3\n")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other account
        try:
            os.setgid(65534)
            os.setuid(65534)
            Workspace.open(folder / "pets")
            message = b"opened"
        except CurateError as exc:
            message = str(exc).encode()
        except BaseException as exc:  # noqa: BLE001 - any other exception is what the test must catch
            message = f"traceback: {exc!r}".encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    shutil.rmtree(folder, ignore_errors=True)
    assert "cannot be written here; add the line `id = 'pets'` under `[workspace]`" in message, message
    assert "\n" not in message
