"""Accept change through the real worker: the accepted file is judged against its new golden copy at once,
and later checks do not reuse the analysis made against the old one (issue 16)."""

from __future__ import annotations

from dashboard.actions import request_run
from healing.config import load_settings
from healing.images.registry import register_image
from healing.images.service import ImageService
from healing.pixelrts import write_image
from healing.worker import Worker
from storage import queries
from storage.engine import session_scope
from storage.models import RunRequest
from tests.images.conftest import make_image, settings  # noqa: F401 - fixtures


def latest(image_id: int) -> dict:
    with session_scope(write=False) as session:
        return queries.latest_check(session, image_id)


def test_accept_change_makes_the_next_checks_healthy(settings, make_image):  # noqa: F811
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    write_image(b"new content " * 500, image)  # changed but valid: an unexpected change
    worker = Worker(load_settings())
    worker.run_once()
    before = latest(image_id)
    assert before["status"] == "warning"
    assert any(f["category"] == "security" for f in before["findings"])

    request = request_run("accept_change", str(image), "alice")
    assert worker.process_requests() == 1
    with session_scope(write=False) as session:
        done = session.get(RunRequest, request["id"]).model_dump()
    assert (done["status"], done["result"]["changed"], done["result"]["status"]) == ("done", True, "healthy")
    after_accept = latest(image_id)
    assert (after_accept["status"], after_accept["reused_analysis"]) == ("healthy", False)
    assert after_accept["findings"] == []

    summary = worker.run_once()  # the next scheduled check: unchanged file, analysis reused — of the new verdict
    assert (summary["healthy"], summary["warning"], summary["reused"]) == (1, 0, 1)
    assert latest(image_id)["status"] == "healthy"


def test_re_registering_a_changed_image_is_not_judged_by_the_old_analysis(settings, make_image):  # noqa: F811
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    write_image(b"other content " * 400, image)
    worker = Worker(load_settings())
    worker.run_once()
    assert latest(image_id)["status"] == "warning"
    register_image(image, settings=settings, accept_current=True, actor="alice")  # `selfheal register` accepts it
    record = ImageService(load_settings()).check(image_id)  # what `selfheal check` and the worker's full check run
    assert (record.status, record.reused) == ("healthy", False)
    check = latest(image_id)
    assert (check["status"], check["reused_analysis"], check["findings"]) == ("healthy", False, [])


def test_the_batched_cycle_does_not_reuse_an_analysis_made_before_a_re_registration(settings, make_image):  # noqa: F811
    image = make_image()
    image_id = register_image(image, settings=settings)["image"]["id"]
    write_image(b"third content " * 400, image)
    worker = Worker(load_settings())
    worker.run_once()
    assert latest(image_id)["status"] == "warning"
    register_image(image, settings=settings, accept_current=True, actor="alice")  # `selfheal register` accepts it
    summary = worker.run_once()  # the worker's batched cycle: golden == sha now, but the last analysis is stale
    assert (summary["healthy"], summary["warning"], summary["reused"]) == (1, 0, 0)
    assert (latest(image_id)["status"], latest(image_id)["reused_analysis"]) == ("healthy", False)
