"""The CLI's error contract on hostile text: one escaped line on stderr, a JSON error object with --json."""

from __future__ import annotations

import json

from healing.cli import main


def test_json_commands_print_a_json_error_object(tmp_path, capsys):
    missing = tmp_path / "missing.rts.png"
    assert main(["info", str(missing), "--json"]) == 3
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": f"{missing}: no such file", "exit_code": 3}
    assert err == f"selfheal: {missing}: no such file\n"


def test_control_characters_in_an_error_are_escaped(tmp_path, capsys):
    name = tmp_path / "evil\x1b[2J\rvalid.rts.png"
    assert main(["validate", str(name)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert "\x1b" not in err and "\r" not in err
    assert err.count("\n") == 1
    assert f"{tmp_path}/evil\\x1b[2J valid.rts.png: no such file\n" in err  # CR folded into the one line
