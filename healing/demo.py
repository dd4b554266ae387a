"""`selfheal demo`: load demonstration data so a fresh installation has something to show.

Creates a few PixelRTS images under $SELFHEAL_HOME/demo/ (compressed data, text, real machine code
from this Python installation, a WebAssembly module in code mode), registers them, checks them, damages
one and heals it from its golden copy, and runs one config-tuning cycle against the vLLM simulator that
leaves a promotion waiting for review.

The demo loads only into an empty home: when the database already holds images, tuning runs,
promotions or alerts (an earlier demo, or real use), nothing is written — replaying it would rewrite
the demo's target file under an applied promotion, propose the same change again and raise new
alerts. ``make run`` runs it at every start, so a restart keeps every decision.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Any

from healing.config import Settings


def _machine_code() -> bytes:
    """A real shared library from this Python installation (the first one found), at most 2 MiB."""
    candidates: list[Path] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        candidates += sorted(Path(libdir).glob("libpython3*.so*"))
    dynload = Path(sysconfig.get_paths()["platstdlib"]) / "lib-dynload"
    candidates += sorted(dynload.glob("_ssl*.so")) + sorted(dynload.glob("*.so"))
    for path in candidates:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data[:4] == b"\x7fELF":
            return data[: 2 << 20]
    return bytes(range(256)) * 4096


def _demo_payloads() -> dict[str, tuple[bytes, dict[str, Any]]]:
    text = "\n".join(f"[{i:05d}] selfheal demo boot log: service {i % 17} started, checksum ok" for i in range(6000)).encode()
    wasm = b"\x00asm\x01\x00\x00\x00" + bytes([0x20, 0x00, 0x41, 0x01, 0x6A, 0x0B]) * 2000
    return {
        "kernel.rts.png": (zlib.compress(os.urandom(64 << 10) + text * 4, 6), {"type": "kernel", "name": "vmlinuz-demo"}),
        "initrd.rts.png": (text, {"type": "initrd", "name": "initrd-demo"}),
        "libpython.rts.png": (_machine_code(), {"type": "library", "name": "python-shared-library"}),
        "module.rts.png": (wasm, {"type": "wasm", "name": "demo-module", "mode": "code"}),
    }


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def load_images(settings: Settings) -> dict[str, Any]:
    """Create, register and check the demo images; damage one and heal it. Returns a summary."""
    from healing.images import ImageService, register_image
    from healing.pixelrts import write_image
    from storage import queries
    from storage.engine import session_scope

    folder = settings.home / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"images": []}
    for name, (data, meta) in _demo_payloads().items():
        path = folder / name
        with session_scope(write=False) as session:
            known = queries.get_image(session, path=str(path.resolve()))
        if not path.exists() or known is None:
            mode = meta.pop("mode", "standard")
            write_image(data, path, mode=mode, metadata=meta)
            register_image(path, settings=settings, critical=name == "kernel.rts.png", interval_s=120,
                           accept_current=False, actor="demo")
            _say(f"registered {path.name} ({len(data)} bytes)")
        summary["images"].append(str(path))

    service = ImageService(settings, auto_heal=False, actor="demo")  # the demo heals explicitly, visibly
    for record in service.check_all():
        _say(f"checked {Path(record.to_dict()['image_path']).name}: {record.status}")

    victim = folder / "initrd.rts.png"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # bit rot in the middle of the pixel data
    victim.write_bytes(bytes(raw))
    damaged = service.check_path(str(victim.resolve()))
    _say(f"damaged {victim.name} on purpose: check says {damaged.status}")
    healed = service.heal(str(victim.resolve()), actor="demo")
    after = service.check_path(str(victim.resolve()))
    _say(f"healed {victim.name} from its golden copy: now {after.status}")
    summary.update(damaged_status=damaged.status, healed=healed.to_dict().get("healed"), after_status=after.status)
    return summary


def load_tuning(settings: Settings) -> dict[str, Any] | None:
    """One config-tuning run against the vLLM simulator that leaves a promotion pending review."""
    try:
        from healing.tuning.runner import run_demo_tuning
    except ImportError:
        _say("config tuning is not available in this build; skipped")
        return None
    result = run_demo_tuning(settings)
    _say(f"tuning run against the vLLM simulator: {result.get('summary', result)}")
    return result


def existing_state(settings: Settings) -> dict[str, int]:
    """Rows already in the database that the demo would add to or overwrite: non-zero counts only."""
    import sqlalchemy as sa

    from storage.engine import session_scope
    from storage.models import Alert, Image, Promotion, TuningIntent, TuningRun

    counts = {}
    with session_scope(settings.database_url, write=False) as session:
        for label, model in (("images", Image), ("tuning intents", TuningIntent), ("tuning runs", TuningRun),
                             ("promotions", Promotion), ("alerts", Alert)):
            counts[label] = int(session.execute(sa.select(sa.func.count()).select_from(model.__table__)).scalar_one())
    return {label: n for label, n in counts.items() if n}


def run_demo(settings: Settings) -> dict[str, Any]:
    """Load the demo into an empty home; anything else is left exactly as it is (``{"skipped": {...}}``)."""
    from storage.migrate import upgrade

    upgrade(settings.database_url)
    found = existing_state(settings)
    if found:
        what = ", ".join(f"{n} {label}" for label, n in found.items())
        _say(f"not loaded: {settings.home} already has data ({what}); the demo loads only into an empty home "
             "(point SELFHEAL_HOME at a new folder for a fresh one)")
        return {"skipped": found}
    summary: dict[str, Any] = {"images": load_images(settings)}
    summary["tuning"] = load_tuning(settings)
    _say(f"done; data under {settings.home}")
    return summary


def main() -> int:
    from healing.config import load_settings

    run_demo(load_settings())
    return 0


if __name__ == "__main__":
    sys.exit(main())
