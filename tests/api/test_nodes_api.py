"""GET /api/v1/nodes: the nodes sharing the database, their images, heartbeats and leader (storage.nodes)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.api.conftest import ApiServer, make_image, one_line_error


def test_nodes_lists_each_nodes_images_and_the_images_list_names_their_node(api: ApiServer, tmp_path: Path) -> None:
    ops = api.client(api.tokens["ops"])
    for name in ("n1", "n2"):
        assert ops.post("/api/v1/images", json={"path": str(make_image(tmp_path / f"{name}.rts.png", seed=len(name)))}).status_code == 201
    viewer = api.client(api.tokens["watcher"])
    host = socket.gethostname()  # the API server registers for its host's node
    images = viewer.get("/api/v1/images").json()["images"]
    assert {row["path"]: row["node"] for row in images if row["path"].startswith(str(tmp_path))} == {
        str(tmp_path / "n1.rts.png"): host, str(tmp_path / "n2.rts.png"): host}
    answer = viewer.get("/api/v1/nodes").json()
    assert answer["success"] is True
    [node] = [n for n in answer["nodes"] if n["node"] == host]
    assert (node["images"], node["statuses"]["unknown"], node["leader"]) == (len(images), len(images), False)
    assert one_line_error(api.client().get("/api/v1/nodes"), 401).startswith("missing bearer token")
