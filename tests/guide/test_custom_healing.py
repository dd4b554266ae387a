"""Guide snippet "Custom Healing Actions": the decorator and set_healing_action leave one action."""

from __future__ import annotations


def test_custom_heal_is_the_one_healing_action(guide_dir) -> None:
    proc = guide_dir.run("custom_healing")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['custom_heal'] True 300"]
