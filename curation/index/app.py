"""`curate app`: serve the FiftyOne App on the workspace's index dataset.

Kept apart from indexing: it only reads the dataset `curate index` wrote, and owns what serving
needs (a free port, usage tracking off, a start that times out as one error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.core import dataset as ds
from curation.core.errors import CurateError
from curation.core.ports import choose_port

if TYPE_CHECKING:
    from curation.core.workspace import Workspace


def launch_app(ws: Workspace, address: str = "127.0.0.1", port: int = 5151) -> str:
    """Serve the FiftyOne App on the workspace's dataset and return its URL.

    A busy `port` is not waited on (FiftyOne would wait 60 s and then time out): the nearest free
    port above it is used, and the returned URL says which. FiftyOne's usage tracking is turned
    off for the App, which would otherwise report researchers' sessions to a third party.
    The session stays open in this process (FiftyOne keeps it); `fiftyone.close_app()` ends it.
    FiftyOne gives its server 60 s to bind; a heavily loaded 2-core machine can miss that on a
    cold start, which becomes a CurateError (retrying in-process is not safe: FiftyOne's cleanup of
    the failed session can take the database connection down with it).

    Raises:
        CurateError: when `curate index` has not run yet, or the server does not start.
    """
    import fiftyone as fo
    from fiftyone.core.service import ServiceListenTimeout

    dataset = ds.open_dataset(ws, require_samples=True)
    port = choose_port(port, address)
    fo.config.do_not_track = True
    try:
        fo.launch_app(dataset, remote=True, address=address, port=port)
    except ServiceListenTimeout as exc:
        raise CurateError(
            f"the FiftyOne App did not start on {address}:{port} within 60 s; run it again"
        ) from exc
    return f"http://{address}:{port}/datasets/{dataset.name}"
