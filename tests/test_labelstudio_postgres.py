"""Label Studio on PostgreSQL as a team runs it, real processes throughout.

`deploy/postgres.sh` starts a cluster in a folder, `curate review serve` starts Label Studio on it
with the variables the script prints, under uWSGI with two workers (`[review] workers = 2`): the
labeling page's assets come from uWSGI, a pull with several export snapshots in flight (both
workers answering) equals one taken a snapshot at a time, two annotators sign up through the invite
link `serve` prints and review the same tasks with tokens of their own, `curate review pull` brings
back both votes, the rows are in PostgreSQL (the data dir holds no SQLite file), and `curate review
stop` leaves no process of the server behind.

Label Studio's ~400 migrations take 1-3 minutes on PostgreSQL on 2 cores, so the migrated empty
database is dumped once per machine and Label Studio version and restored into each fresh cluster
(a fresh CI machine therefore runs the migrations on PostgreSQL every time).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from label_studio_sdk.client import LabelStudio
from typer.testing import CliRunner

from curation.cli import app
from curation.core import dataset as ds
from curation.core.config import CurateConfig, ReviewConfig
from curation.core.errors import CurateError
from curation.core.ports import free_port
from curation.core.workspace import Workspace
from curation.review import pull_chunks
from curation.review.project import project_id_of
from curation.review.pull import REVIEW_FIELDS, annotation_result, pull
from curation.review.server import ServerInfo, check_identity, database_in, read_server, stop, use_server
from curation.review.server_process import group_members, is_healthy
from tests.test_review import build_candidates

POSTGRES_SH = Path(__file__).resolve().parents[1] / "deploy" / "postgres.sh"
ANNOTATORS = ("ann-a@example.com", "ann-b@example.com")


def start_postgres(folder: Path, port: int) -> dict[str, str]:
    """Run the deploy script; returns the variables it prints for Label Studio."""
    out = subprocess.run(
        ["bash", str(POSTGRES_SH), "start", str(folder), str(port)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())


def _client_args(db: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """psql/pg_dump arguments reaching the database as Label Studio does (the password in their env)."""
    return ["-d", database_in(db)], {**os.environ, "PGPASSWORD": db["POSTGRE_PASSWORD"]}


def psql(db: dict[str, str], sql: str) -> str:
    target, env = _client_args(db)
    return subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", *target, "-c", sql],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def migrate(db: dict[str, str], scratch: Path) -> None:
    """Bring the empty database to Label Studio's schema: restore the machine's dump, or migrate and dump."""
    import label_studio

    dump = Path(tempfile.gettempdir()) / f"curate-labelstudio-{version('label-studio')}-migrated-postgres.sql"
    target, env = _client_args(db)
    if dump.exists():
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *target, "-f", str(dump)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        return
    manage = Path(label_studio.__file__).parent / "manage.py"
    subprocess.run(
        [sys.executable, str(manage), "migrate", "--noinput"],
        env={
            **env,
            **db,
            "LABEL_STUDIO_BASE_DATA_DIR": str(scratch),
            "LATEST_VERSION_CHECK": "false",
            "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
        },
        check=True,
        cwd=manage.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=900,
    )
    partial = dump.with_name(f"{dump.name}.{os.getpid()}")
    subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", *target, "-f", str(partial)],
        env=env,
        check=True,
        timeout=300,
    )
    partial.replace(dump)  # atomic: a concurrent session sees the whole dump or none


def sign_up(invite: str, email: str) -> str:
    """What an annotator does with the invite link: sign up (which logs in), then read their API token."""
    session = requests.Session()
    session.get(invite, timeout=60).raise_for_status()
    reply = session.post(
        invite,
        data={
            "email": email,
            "password": "annotator-pass-1",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": invite},
        timeout=60,
    )
    reply.raise_for_status()
    base = invite.split("/user/signup", 1)[0]
    return session.get(f"{base}/api/current-user/token", timeout=60).json()["token"]


@dataclass
class TeamServer:
    home: Workspace  # owns the server; its media folder is the document root, each team workspace's media below it
    db: dict[str, str]
    info: ServerInfo
    serve_output: str


@pytest.fixture(scope="module")
def team_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    # as root the cluster runs as `postgres`, which cannot enter pytest's root-only temp folders
    pg_parent = Path(tempfile.mkdtemp(prefix="curate-pg-"))
    pg_parent.chmod(0o711)
    pg_dir = pg_parent / "cluster"
    home = Workspace.create(tmp_path_factory.mktemp("team"), CurateConfig(review=ReviewConfig(workers=2)))
    try:
        db = start_postgres(pg_dir, free_port())
        migrate(db, tmp_path_factory.mktemp("migrate-scratch"))
        result = CliRunner().invoke(
            app, ["review", "serve", "--port", str(free_port()), "-w", str(home.root)], env=db
        )
        assert result.exit_code == 0, result.output
        info = read_server(home)
        assert info is not None
        yield TeamServer(home, db, info, result.output)
    finally:
        stop(home)
        if (pg_dir / "data" / "PG_VERSION").exists():
            subprocess.run(["bash", str(POSTGRES_SH), "stop", str(pg_dir)], check=False, timeout=120)
        shutil.rmtree(pg_parent, ignore_errors=True)


@pytest.fixture(scope="module")
def researcher(team_server: TeamServer) -> Workspace:
    """A workspace of 7 candidates pushed to the team server, each annotated once by the admin
    (one with a rating the page cannot produce), pulled in snapshots of 2 tasks."""
    info = team_server.info
    config = CurateConfig(review=ReviewConfig(pull_page_size=2))
    config.index.dataset_name = f"review-workers-{team_server.home.root.name}"
    ws = Workspace.create(team_server.home.root / "in-flight", config)
    use_server(ws, info.url, info.token, document_root=Path(info.document_root))
    ids = build_candidates(ws, 7)
    pushed = CliRunner().invoke(app, ["review", "push", "-w", str(ws.root)])
    assert pushed.exit_code == 0, pushed.output
    client = LabelStudio(base_url=info.url, api_key=info.token)
    listed = {
        t.data[ds.CANDIDATE_ID]: t.id
        for t in client.tasks.list(project=project_id_of(ws), fields="task_only")
    }
    for i, cid in enumerate(ids):
        result = annotation_result(("accept", "reject")[i % 2], 7 if i == 3 else 1 + i % 5)
        client.annotations.create(id=listed[cid], result=result)
    return ws


def test_serve_runs_uwsgi_workers_that_serve_the_pages_assets(
    team_server: TeamServer, researcher: Workspace
) -> None:
    home, info = team_server.home, team_server.info
    assert info.workers == 2
    master = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    assert master[1].endswith(b"/uwsgi") and b"--processes=2" in master
    assert len(group_members(info.pid or 0)) == 3  # the master and its two workers
    assert is_healthy(info.url)
    check_identity(home, info)  # the organization is named after the workspace, as with `label-studio start`
    environment = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={home.root / 'media'}".encode() in environment
    assert info.password not in team_server.serve_output

    session = requests.Session()
    session.get(f"{info.url}/user/login/", timeout=60).raise_for_status()
    logged_in = session.post(
        f"{info.url}/user/login/",
        data={
            "email": info.email,
            "password": info.password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{info.url}/user/login/"},
        timeout=60,
    )
    assert logged_in.status_code == 200 and "/user/login" not in logged_in.url
    page = session.get(f"{info.url}/projects/{project_id_of(researcher)}/data?labeling=1", timeout=60)
    assert page.status_code == 200
    assets = set(re.findall(r'(?:src|href)="(/(?:static|react-app)/[^"?]+\.(?:js|css))', page.text))
    assert {a.rsplit(".", 1)[1] for a in assets} == {"js", "css"}, assets
    for asset in assets:
        served = session.get(info.url + asset, timeout=60)
        assert served.status_code == 200 and served.content, asset
        assert "X-Frame-Options" not in served.headers  # from disk by uWSGI, not through Django's middleware


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time a process has used, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_pull_with_snapshots_in_flight_equals_one_at_a_time(
    team_server: TeamServer, researcher: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pulled(in_flight: int) -> tuple[dict[str, tuple], list[dict], int]:
        researcher.config.review.pull_in_flight = in_flight
        report = pull(researcher, full=True)
        assert report.raw_path is not None
        with gzip.open(report.raw_path, "rt") as raw:
            delta = sorted((json.loads(line) for line in raw), key=lambda t: t["id"])
        samples = ds.open_dataset(researcher)
        reviews = dict(
            zip(samples.values(ds.CANDIDATE_ID), zip(*samples.values(list(REVIEW_FIELDS))), strict=True)
        )
        return reviews, delta, report.invalid_count

    one_at_a_time = pulled(1)
    assert len(one_at_a_time[1]) == 7 and one_at_a_time[2] == 1
    assert Counter(r[0] for r in one_at_a_time[0].values()) == {"accept": 4, "reject": 2, None: 1}

    running, overlap, lock = [0], [0], threading.Lock()
    real_snapshot = pull_chunks.snapshot

    def watched(*args: object) -> list[dict]:
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        try:
            return real_snapshot(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(pull_chunks, "snapshot", watched)  # observes the real snapshots, changes nothing
    master = team_server.info.pid or 0
    workers = [pid for pid in group_members(master) if pid != master]
    before = {pid: _cpu_ticks(pid) for pid in workers}
    assert pulled(3) == one_at_a_time
    assert overlap[0] >= 2  # 4 snapshots of 2 tasks, up to 3 at once
    assert all(_cpu_ticks(pid) > ticks for pid, ticks in before.items())  # both workers answered


def test_two_annotators_review_on_postgres(team_server: TeamServer) -> None:
    home, db, info = team_server.home, team_server.db, team_server.info
    assert info.database == f"postgresql://labelstudio@127.0.0.1:{db['POSTGRE_PORT']}/labelstudio"
    invite = next(
        word
        for word in team_server.serve_output.split()
        if word.startswith(f"{info.url}/user/signup/?token=")
    )
    tokens = {email: sign_up(invite, email) for email in ANNOTATORS}
    assert len(set(tokens.values()) | {info.token}) == 3  # each annotator acts as themselves

    config = CurateConfig()
    config.index.dataset_name = f"review-postgres-{home.root.name}"
    ws = Workspace.create(home.root / "researcher", config)
    runner = CliRunner()
    recorded = runner.invoke(
        app,
        ["review", "serve", "--url", info.url, "--token", info.token, "--document-root", info.document_root]
        + ["-w", str(ws.root)],
    )
    assert recorded.exit_code == 0, recorded.output
    ids = build_candidates(ws, 3)
    pushed = runner.invoke(app, ["review", "push", "--overlap", "2", "-w", str(ws.root)])
    assert pushed.exit_code == 0, pushed.output

    votes = {ANNOTATORS[0]: ["accept", "accept", "accept"], ANNOTATORS[1]: ["accept", "reject", "accept"]}
    user_ids = {}
    for email, decisions in votes.items():
        client = LabelStudio(base_url=info.url, api_key=tokens[email])
        user_ids[email] = client.users.whoami().id
        listed = {
            t.data[ds.CANDIDATE_ID]: t
            for t in client.tasks.list(project=project_id_of(ws), fields="task_only")
        }
        for cid, decision in zip(ids, decisions, strict=True):
            client.annotations.create(id=listed[cid].id, result=annotation_result(decision, 4))

    # the workspace published its images below the team server's document root: the annotator's page gets them
    url = re.search(rf'/data/local-files/\?d=[^"]*/s000/{ids[0]}\.png', json.dumps(listed[ids[0]].data))
    assert url is not None, listed[ids[0]].data  # however the page lays the task out
    image = requests.get(
        info.url + url.group(),
        headers={"Authorization": f"Token {tokens[email]}"},
        timeout=60,
    )
    assert image.status_code == 200
    assert image.content == (ws.candidates_dir / "s000" / f"{ids[0]}.png").read_bytes()

    pulled = runner.invoke(app, ["review", "pull", "-w", str(ws.root)])
    assert pulled.exit_code == 0, pulled.output
    samples = ds.open_dataset(ws)
    assert samples.values(ds.REVIEW_ANNOTATORS) == [2, 2, 2]
    assert sorted(samples.values(ds.REVIEW_DECISION)) == ["accept", "accept", "reject"]  # a 1-1 tie rejects
    shown = runner.invoke(app, ["review", "status", "-w", str(ws.root)])
    assert shown.exit_code == 0, shown.output
    # the task API names annotators by user id; status shows their emails
    assert f"{ANNOTATORS[0]}: 3 annotations, 3 accepts" in shown.output
    assert f"{ANNOTATORS[1]}: 3 annotations, 2 accepts" in shown.output
    assert f"user {user_ids[ANNOTATORS[0]]}:" not in shown.output

    # the rows are PostgreSQL's: tasks, both annotators' votes, their accounts; no SQLite beside them
    project_id = project_id_of(ws)  # the server also holds the in-flight researcher's project
    assert psql(db, f"SELECT count(*) FROM task WHERE project_id = {project_id}") == "3"
    votes_sql = "SELECT count(*), count(DISTINCT c.completed_by_id) FROM task_completion c JOIN task t"
    assert psql(db, f"{votes_sql} ON c.task_id = t.id WHERE t.project_id = {project_id}") == "6|2"
    emails = set(psql(db, "SELECT email FROM htx_user").split())
    assert emails == {info.email, *ANNOTATORS}
    data_dir = home.review_dir / "labelstudio-data"
    assert not [p for p in data_dir.rglob("*") if p.suffix.startswith(".sqlite")]

    # `curate review stop` ends the master and every worker
    stopped = runner.invoke(app, ["review", "stop", "-w", str(home.root)])
    assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
    assert group_members(info.pid or 0) == [] and not is_healthy(info.url)

    # restarted without the database variables, Label Studio would start over on an empty SQLite file
    refused = runner.invoke(app, ["review", "serve", "-w", str(home.root)])
    assert isinstance(refused.exception, CurateError)  # the CLI prints it as one `error:` line
    assert f"keeps its data in {info.database}" in str(refused.exception)
    assert not [p for p in data_dir.rglob("*") if p.suffix.startswith(".sqlite")]
