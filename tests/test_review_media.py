"""What Label Studio serves, and to whom a workspace writes: the media tree, the bound port, the identity.

Any user of a Label Studio (an annotator who joined through the invite link) can create a project
and a local-files storage on any folder under its document root, then read every file below it.
These tests play that annotator against the real server with every path they can name, and check
that a workspace finds its own server where Label Studio really listens and writes to no other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import CurateConfig, ReviewConfig
from curation.core.errors import CurateError
from curation.core.ports import free_port, port_free
from curation.core.workspace import Workspace
from curation.review.client import connect
from curation.review.media import publish
from curation.review.project import project_file, project_marker
from curation.review.pull import annotation_result, pull
from curation.review.push import push
from curation.review.server import (
    ServerInfo,
    data_dir_of,
    invite_url,
    read_server,
    serve,
    server_file,
    stop,
    use_server,
    write_server,
)
from curation.review.server_process import listening_ports, start_server, terminate
from curation.study.create import create
from curation.study.pull import pull as study_pull
from curation.study.rating_page import score_result
from curation.study.studies import study_dir
from tests.fixtures.labelstudio import seeded_home
from tests.test_labelstudio_postgres import sign_up
from tests.test_review import build_candidates
from tests.test_study import add_concepts, write_evaluation


def _storage_paths(workspace: Workspace, document_root: Path, home: Workspace) -> list[str]:
    """Every folder an annotator might name for a storage: the root, `..` tricks, workspaces, absolute paths."""
    media = document_root / workspace.workspace_id
    return [
        str(document_root),
        f"{document_root}/..",
        f"{document_root}/../review",
        f"{media}/../..",
        f"{media}/study/../../../review",
        f"{media}/./../../workspaces",
        str(home.root),
        str(home.review_dir),
        str(data_dir_of(home.root)),
        str(workspace.root),
        str(workspace.review_dir),
        str(workspace.root / "study"),
        str(study_dir(workspace, "eval-out")),
        "/",
        "/etc",
        "review",
        "../review",
        str(media),
        f"{media}/study/eval-out",
    ]


def _requests_for(secret: Path, document_root: Path, storages: list[Path]) -> list[str]:
    """`?d=` values naming a file: relative to the root and to each storage, absolute, encoded, doubled."""
    names = {os.path.relpath(secret, document_root), str(secret), "/" + str(secret)}
    names |= {os.path.relpath(secret, folder) for folder in storages}
    names |= {f"{folder.relative_to(document_root)}/{os.path.relpath(secret, folder)}" for folder in storages}
    encoded = set()
    for name in names:
        encoded |= {
            quote(name, safe=""),  # every separator and dot-dot escaped once
            quote(quote(name, safe=""), safe=""),  # ... and twice
            name.replace("../", "%2e%2e/"),
            name.replace("../", "..%2f"),
            name.replace("/", "\\"),
            name.replace("../", "....//"),
        }
    return sorted(names) + sorted(encoded)


def test_an_invited_annotator_reads_nothing_but_media(
    labelstudio_workspace: Callable[..., Workspace],
    labelstudio_home: Workspace,
    labelstudio: ServerInfo,
    tmp_path: Path,
) -> None:
    """Mallory joins through the invite link, makes storages on every folder she can name and asks for
    every secret with every path trick: server.json (admin password and token), the SQLite database
    (every user's token), the review pull deltas, the study's mapping, ratings and raw pulls. All
    refused; the candidates she was invited to review still load."""
    ws = labelstudio_workspace()
    ids = build_candidates(ws, 2)
    report = push(ws)
    client = connect(ws).client
    task = next(t for t in client.tasks.list(project=report.project_id, fields="task_only"))
    client.annotations.create(id=task.id, result=annotation_result("accept", 4))
    delta = pull(ws).raw_path
    add_concepts(ws)
    study = create(ws, write_evaluation(tmp_path / "eval-out"))
    study_task = next(t for t in client.tasks.list(project=study.project_id, fields="task_only"))
    client.annotations.create(
        id=study_task.id, result=score_result({"alignment": [5, 6, 7], "fidelity": [1, 2, 3]})
    )
    study_pull(ws)
    folder = study_dir(ws, "eval-out")
    secrets = [
        labelstudio.path,  # the server's admin password and token
        data_dir_of(labelstudio_home.root) / "label_studio.sqlite3",  # every user's token
        server_file(ws),
        delta,
        folder / "mapping.json",
        folder / "ratings.json",
        *sorted((folder / "pulls").glob("*.json")),
        ws.config_path,
    ]
    assert all(path is not None and path.is_file() for path in secrets)
    link = ws.candidates_dir / "s000" / "link.png"  # a symlink in the workspace, pointing at a secret
    link.symlink_to(Path("../../review/server.json"))

    mallory = {
        "Authorization": f"Token {sign_up(invite_url(labelstudio), f'mallory-{uuid.uuid4().hex[:8]}@example.com')}"
    }
    root = Path(labelstudio.document_root)
    project = requests.post(
        f"{labelstudio.url}/api/projects", json={"title": "mallory"}, headers=mallory, timeout=60
    )
    assert project.status_code == 201
    accepted = []
    for path in _storage_paths(ws, root, labelstudio_home):
        made = requests.post(
            f"{labelstudio.url}/api/storages/localfiles",
            json={"project": project.json()["id"], "path": path, "use_blob_urls": True, "title": "mine"},
            headers=mallory,
            timeout=60,
        )
        if made.status_code == 201:
            accepted.append(Path(made.json()["path"]))
        else:
            assert made.status_code == 400, (path, made.text)
    assert accepted == [root / ws.workspace_id, root / ws.workspace_id / "study" / "eval-out"]  # media only

    served = requests.get(labelstudio.url + task.data["images"][0], headers=mallory, timeout=60)
    assert served.status_code == 200  # what she was invited for loads: the refusals below are not blanket
    for name in (os.path.relpath(link, root), f"{ws.workspace_id}/candidates/s000/link.png"):
        followed = requests.get(
            f"{labelstudio.url}/data/local-files/", params={"d": name}, headers=mallory, timeout=60
        )
        assert followed.status_code != 200 and labelstudio.token.encode() not in followed.content
    for secret in secrets:
        for name in _requests_for(secret, root, accepted):
            for answer in (
                requests.get(
                    f"{labelstudio.url}/data/local-files/", params={"d": name}, headers=mallory, timeout=60
                ),
                requests.get(f"{labelstudio.url}/data/local-files/?d={name}", headers=mallory, timeout=60),
            ):
                assert answer.status_code != 200 and secret.read_bytes()[:64] not in answer.content, (
                    secret,
                    name,
                )

    # the media tree holds images only, as files of their own (no symlink could point out of it)
    media = [p for p in (root / ws.workspace_id).rglob("*") if not p.is_dir()]
    assert media and all(p.suffix in (".png", ".jpg") and not p.is_symlink() for p in media)
    assert {p.stem for p in media if p.parent.name == "s000"} == set(ids)
    assert all(not p.is_symlink() for p in (root / ws.workspace_id).rglob("*"))
    storages = client.import_storage.local.list(project=study.project_id)
    assert [Path(s.path) for s in storages] == [
        root / ws.workspace_id / "study" / "eval-out"
    ]  # not study/<name>/


def test_a_candidate_linked_to_a_secret_is_never_published(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    """A candidate image that is a symlink to the workspace's server.json: the push refuses it, and
    the URL it would have had serves nothing."""
    import fiftyone as fo

    ws = labelstudio_workspace()
    build_candidates(ws, 1)
    push(ws)
    evil = ws.candidates_dir / "s000" / "evil.png"
    evil.symlink_to(Path("../../review/server.json"))
    dataset = ds.open_dataset(ws)
    dataset.add_sample(fo.Sample(filepath=str(evil), **{ds.CANDIDATE_ID: "evil", ds.CONCEPTS: ["cat"]}))
    with pytest.raises(CurateError, match="evil.png is not an image annotators may see"):
        push(ws)
    media = Path(labelstudio.document_root) / ws.workspace_id
    assert not (media / "candidates" / "s000" / "evil.png").exists()
    headers = {"Authorization": f"Token {labelstudio.token}"}
    asked = requests.get(
        f"{labelstudio.url}/data/local-files/",
        params={"d": f"{ws.workspace_id}/candidates/s000/evil.png"},
        headers=headers,
        timeout=60,
    )
    assert asked.status_code == 404 and b"token" not in asked.content


def test_publish_links_refuses_secrets_and_copies_across_filesystems(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    image = ws.candidates_dir / "s000" / "a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG one")
    media = tmp_path / "root" / "media"
    target = publish(ws.root, media, image)
    assert target == media / "candidates" / "s000" / "a.png" and target.samefile(image)
    assert publish(ws.root, media, image) == target and target.samefile(image)  # again: nothing to do
    image.unlink()
    image.write_bytes(b"\x89PNG two")  # regenerated: a new file
    assert publish(ws.root, media, image).read_bytes() == b"\x89PNG two"
    for secret in (
        "review/server.json",
        "study/x/mapping.json",
        "study/x/pulls/a.png",
        "review/pulls/a.png",
        "curate.toml",
    ):
        path = ws.root / secret
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"secret")
        with pytest.raises(CurateError, match="not an image annotators may see"):
            publish(ws.root, media, path)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"\x89PNG")
    with pytest.raises(CurateError, match="not an image annotators may see"):
        publish(ws.root, media, outside)

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to copy across")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        copied = publish(ws.root, other / "media", image)
        assert (
            copied.read_bytes() == b"\x89PNG two" and not copied.samefile(image) and not copied.is_symlink()
        )
        stamp = copied.stat().st_mtime_ns
        assert publish(ws.root, other / "media", image).stat().st_mtime_ns == stamp  # the copy is kept
    finally:
        shutil.rmtree(other)


def test_a_team_server_needs_a_document_root_without_this_workspace_secrets(
    labelstudio_workspace: Callable[..., Workspace], labelstudio: ServerInfo
) -> None:
    ws = labelstudio_workspace()
    for root in (ws.root, ws.root.parent, ws.review_dir, ws.root / "study"):
        root.mkdir(exist_ok=True)
        with pytest.raises(CurateError, match="would serve this workspace's credentials"):
            use_server(ws, labelstudio.url, labelstudio.token, document_root=root)
    with pytest.raises(CurateError, match="pass --document-root"):
        use_server(ws, labelstudio.url, labelstudio.token)
    own = ws.root / "media"
    own.mkdir()
    assert use_server(ws, labelstudio.url, labelstudio.token, document_root=own).media == str(
        own / ws.workspace_id
    )
    server_file(ws).unlink()  # a server never recorded: where would the push publish?
    unrecorded = CliRunner().invoke(
        app, ["review", "push", "--url", labelstudio.url, "--token", labelstudio.token, "-w", str(ws.root)]
    )
    assert unrecorded.exit_code == 1 and "is not recorded for" in str(unrecorded.exception)
    assert "--document-root" in str(unrecorded.exception)


def _second_home(tmp_path_factory: pytest.TempPathFactory, port: int) -> Workspace:
    config = CurateConfig(review=ReviewConfig(port=port))
    config.index.dataset_name = f"review-media-{uuid.uuid4().hex[:8]}"
    return seeded_home(tmp_path_factory.mktemp("second-home"), config)


def _port_pair() -> int:
    """A free port whose next one is free too, below the ephemeral range: Label Studio moves to the
    next port without checking that it can bind it (an outgoing connection may hold one up there)."""
    return next(port for port in range(20000, 32000, 7) if port_free(port) and port_free(port + 1))


def test_serve_records_the_port_it_bound_and_writes_only_to_its_own_server(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workspace B is configured on the port workspace A's server holds. `serve` found it free (A's
    server bound it while B's migrated: the race is made certain by taking serve's port check away),
    so B's Label Studio moved to the next port by itself. B must record that port, and a push from a
    record pointing at A's server (the old bug's state, or a copied workspace given a new id) must
    write nothing there."""
    taken = _port_pair()
    a, b = _second_home(tmp_path_factory, taken), _second_home(tmp_path_factory, taken)
    try:
        first = serve(a, timeout=420)
        assert first.url == f"http://127.0.0.1:{taken}"
        monkeypatch.setattr("curation.review.server.choose_port", lambda wanted, address="127.0.0.1": wanted)
        result = CliRunner().invoke(app, ["review", "serve", "-w", str(b.root)])
        assert result.exit_code == 0, result.output
        info = read_server(b)
        assert info.url == f"http://127.0.0.1:{taken + 1}" and listening_ports(info.pid) == {taken + 1}
        assert f"port {taken} was busy; serving on {taken + 1}" in result.output
        build_candidates(b, 1)
        assert push(b).pushed == 1  # its own server

        a_projects = {p.id for p in connect_admin(first).projects.list()}
        for token in (first.token, info.token):  # B's record aimed at A: A's token (a copy), or B's
            write_server(b, ServerInfo(**{**info.__dict__, "url": first.url, "token": token}))
            with pytest.raises(CurateError, match=f"Label Studio at {first.url} is not this workspace's"):
                push(b)
        assert {p.id for p in connect_admin(first).projects.list()} == a_projects  # nothing made in A
        found = serve(b)  # its server still runs: found where it listens, the record (B's token) mended
        assert (found.url, found.pid) == (info.url, info.pid) and read_server(b).url == info.url
        assert push(b).already == 1
    finally:
        stop(b)
        stop(a)


def connect_admin(server: ServerInfo):
    from label_studio_sdk.client import LabelStudio

    return LabelStudio(base_url=server.url, api_key=server.token)


def test_a_workspace_served_before_the_media_tree_is_moved_by_serve_and_push(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A server started the old way (document root: the workspace) with a project and a task whose
    URLs are workspace-relative: the next push says to run serve; serve restarts it on the media folder
    and says so; push moves the storages; the old task's images load and server.json no longer does."""
    ws = _second_home(tmp_path_factory, free_port())
    ids = build_candidates(ws, 2)
    data_dir = data_dir_of(ws.root)
    old = ServerInfo(
        url="", email="curate@example.com", password="old-pass-1", token="ab" * 20, path=server_file(ws)
    )
    env = {
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(ws.root),  # what `serve` gave Label Studio before the media tree
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": old.email,
        "LABEL_STUDIO_PASSWORD": old.password,
        "LABEL_STUDIO_USER_TOKEN": old.token,
        "LATEST_VERSION_CHECK": "false",
    }
    old.pid, port = start_server(data_dir, ws.config.review.port, ws.review_dir / "labelstudio.log", env, 420)
    try:
        old.url, old.document_root = f"http://127.0.0.1:{port}", str(ws.root)
        payload = json.loads(old.to_json())
        payload.pop("media")
        server_file(ws).write_text(json.dumps(payload))  # as the code before the media tree wrote it
        server_file(ws).chmod(0o600)
        admin = connect_admin(old)
        project = admin.projects.create(
            title="old",
            description=project_marker(ws),
            label_config=(Path("review_ui_config") / "review.xml").read_text(),
        )
        for folder in (ws.candidates_dir, ws.concepts_dir):
            admin.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True)
        data = {"images": [f"/data/local-files/?d=candidates/s000/{ids[0]}.png"], "thumb": "", "strip": "",
                "captions": "c", "refs_html": "", "scores": "", ds.CANDIDATE_ID: ids[0]}  # fmt: skip
        admin.projects.import_tasks(id=project.id, request=[{"data": data}])
        project_file(ws).write_text(json.dumps({"url": old.url, "project_id": project.id}))
        headers = {"Authorization": f"Token {old.token}"}
        leak = admin.import_storage.local.create(
            project=project.id, path=str(ws.review_dir), use_blob_urls=True
        )
        assert requests.get(
            f"{old.url}/data/local-files/?d=review/server.json", headers=headers, timeout=60
        ).ok
        admin.import_storage.local.delete(id=leak.id)  # the hole this test closes

        with pytest.raises(CurateError, match="run `curate review serve"):
            push(ws)
        result = CliRunner().invoke(app, ["review", "serve", "-w", str(ws.root)])
        assert result.exit_code == 0, result.output
        info = read_server(ws)
        assert (
            f"now serves {ws.root / 'media'} alone" in result.output and "curate review push" in result.output
        )
        assert (
            info.document_root == str(ws.root / "media") and info.token == old.token and info.pid != old.pid
        )
        assert push(ws).already == 1  # the old task is the same task: pushed once
        storages = connect(ws).client.import_storage.local.list(project=project.id)
        assert all(Path(info.document_root) in Path(s.path).parents for s in storages)
        image = requests.get(info.url + data["images"][0], headers=headers, timeout=60)
        assert (
            image.status_code == 200
            and image.content == (ws.candidates_dir / "s000" / f"{ids[0]}.png").read_bytes()
        )
        assert (
            requests.get(
                f"{info.url}/data/local-files/?d=review/server.json", headers=headers, timeout=60
            ).status_code
            == 404
        )
    finally:
        terminate(old.pid)
        stop(ws)
