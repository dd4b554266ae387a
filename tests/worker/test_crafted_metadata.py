"""A registered image whose metadata was crafted (NaN/Infinity, huge integers, wrong types) is critical for
the worker's check — not unknown, as when the checker threw on it — and the worker's own flow heals it."""

from __future__ import annotations

import json

import pytest

from healing.config import load_settings
from healing.images.registry import register_image
from healing.worker import Worker
from tests.images.conftest import flip_idat_byte
from tests.security.hostile_corpus import metadata_text, with_metadata

CRAFTED = {
    "offsets-start-infinity": lambda text: text[:-1] + ',"offsets":{"k":{"start":Infinity,"size":1}}}',
    "zstd-original-size-abc": lambda text: text[:-1] + ',"compression":{"type":"zstd","original_size":"abc"}}',
    "data-size-5000-digits": lambda text: text[:-1] + ',"data_size":' + "9" * 5000 + "}",
    "data-hash-int": lambda text: text.replace(json.dumps(json.loads(text)["data_hash"]), "12345"),
}


@pytest.mark.parametrize("damaged", [False, True], ids=["metadata-only", "plus-damaged-pixels"])
@pytest.mark.parametrize("craft", sorted(CRAFTED))
def test_crafted_metadata_is_critical_and_healed(settings, make_image, monkeypatch, craft, damaged):
    monkeypatch.setenv("VLM_AUTO_HEAL", "true")
    image = make_image("crafted.rts.png")
    good = image.read_bytes()
    register_image(image, settings=settings)
    if damaged:
        flip_idat_byte(image)
    text = json.dumps(metadata_text(image.read_bytes()), separators=(",", ":"))
    image.write_bytes(with_metadata(image.read_bytes(), CRAFTED[craft](text)))

    worker = Worker(load_settings())
    summary = worker.run_once()
    assert (summary["critical"], summary["unknown"], summary["healed"], summary["heal_failed"]) == (1, 0, 1, 0)
    assert image.read_bytes() == good
    again = Worker(load_settings()).run_once()
    assert (again["healthy"], again["critical"], again["unknown"]) == (1, 0, 0)
