"""``b2m --config site.toml``: a site's settings as each command's defaults, the command line winning,
and every mistake in the file named by file, table and key before anything runs."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from b2m.cli import build_parser, main
from b2m.config import ConfigError, apply_config, command_path

PHILIPS = sorted((pathlib.Path(__file__).parents[1] / "data" / "pyneal" / "philips").glob("*.par"))


def _parse(tmp_path, text: str, argv: list[str]):
    cfg = tmp_path / "site.toml"
    cfg.write_text(text)
    parser = build_parser()
    used = apply_config(parser, str(cfg), command_path(parser, argv))
    return parser.parse_args(argv), used


def test_a_table_gives_its_command_defaults_and_the_command_line_wins(tmp_path):
    text = """
[session]
model = "/data/bundle"
library = "/data/library"
pyneal-port = 5558
min_dwell = 12
no-dashboard = true
mode = "generation"

[scanner.watch]
vendor = "philips"
tr = 1.5
volumes = 410
"""
    args, used = _parse(tmp_path, text, ["session", "--out", "/tmp/s1", "--min-dwell", "7.5"])
    assert (args.model, args.library, args.out) == ("/data/bundle", "/data/library", "/tmp/s1")
    assert args.pyneal_port == 5558 and args.no_dashboard is True and args.mode == "generation"
    assert args.min_dwell == 7.5  # the command line wins
    assert used["min_dwell"] == 12.0 and isinstance(used["min_dwell"], float)  # an int where a float is wanted
    # scanner watch's --vendor is required on the command line, unless the file gives it
    args, _ = _parse(tmp_path, text, ["scanner", "watch", "/mnt/xtc"])
    assert (args.vendor, args.tr, args.volumes, args.folder) == ("philips", 1.5, 410, "/mnt/xtc")
    # a repeatable option takes a list
    with_list = text.replace("[scanner.watch]", 'events = ["a1=played.tsv"]\n\n[scanner.watch]')  # in [session]
    args, _ = _parse(tmp_path, with_list, ["session", "export", "x"])
    assert args.events == ["a1=played.tsv"]
    # a command without a table keeps its own defaults
    args, used = _parse(tmp_path, text, ["receive", "--out", "/tmp/rx"])
    assert used == {} and args.out == "/tmp/rx"


@pytest.mark.parametrize("text, message", [
    ("[session]\npyneal-prot = 5558\n", r"site.toml: \[session\] pyneal-prot: not an option of `b2m session` "
                                        r"\(did you mean pyneal-port\?\)"),
    ("[session]\nmin-dwell = \"long\"\n", r"\[session\] min-dwell: expected a number, got 'long'"),
    ("[session]\npyneal-port = 55.5\n", r"\[session\] pyneal-port: expected a whole number, got 55.5"),
    ("[session]\nmode = \"karaoke\"\n", r"\[session\] mode: 'karaoke' is not one of retrieval, generation"),
    ("[session]\nno-dashboard = \"yes\"\n", r"\[session\] no-dashboard: expected true or false, got 'yes'"),
    ("[sesion]\nmodel = \"x\"\n", r"\[sesion\] is not a b2m command \(did you mean \[session\]\?\)"),
    ("[scanner.watch]\nfolder = \"/mnt\"\n", r"\[scanner.watch\] folder: a positional argument; give it on the "
                                             r"command line"),
    ("[session\nmodel = 1\n", r"site.toml: not valid TOML"),
    ("[session]\nevents = \"a1=p.tsv\"\n", r"\[session\] events: expected a list"),
])
def test_every_mistake_is_named_even_in_a_table_not_used(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _parse(tmp_path, text, ["receive", "--out", "/tmp/rx"])  # another command: the file is checked whole


def test_main_takes_required_options_from_the_file_or_b2m_config_and_fails_with_exit_code_2(tmp_path, capsys,
                                                                                             monkeypatch):
    cfg = tmp_path / "site.toml"
    cfg.write_text(f'[keys]\nout = "{tmp_path / "keys"}"\n')  # keys' --out is required: the file gives it
    assert main(["--config", str(cfg), "keys", "scanner"]) == 0
    assert (tmp_path / "keys" / "scanner.key").exists() and (tmp_path / "keys" / "scanner.key_secret").exists()
    cfg.write_text("[keys]\nforce = true\n")
    monkeypatch.setenv("B2M_CONFIG", str(cfg))
    assert main(["keys", "scanner"]) == 2
    assert "site.toml: [keys] force: not an option of `b2m keys`" in capsys.readouterr().err
    monkeypatch.setenv("B2M_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["keys", "scanner"]) == 2
    assert "missing.toml: no such config file (from --config or $B2M_CONFIG)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_site_file_runs_the_scanner_watch(b2m_proc, endpoint, tmp_path):
    """The real process: the file gives the vendor, TR, volume count and receiver; the command line only
    the folder."""
    cfg, folder, out = tmp_path / "site.toml", tmp_path / "xtc", tmp_path / "session"
    folder.mkdir()
    cfg.write_text(f'[scanner.watch]\nvendor = "philips"\ntr = 1\nvolumes = 4\nconnect = "{endpoint}"\n'
                   f'run-id = "nf1"\nquiet = true\n')
    rx = b2m_proc("receive", "--bind", endpoint, "--out", out, name="receive")
    rx.wait_for("ready")
    tx = b2m_proc("--config", cfg, "scanner", "watch", folder, name="watch")
    tx.wait_for("watching")
    for par in PHILIPS:
        for suffix in (".par", ".rec"):
            shutil.copy(str(par)[:-4] + suffix, folder)
    assert tx.wait(timeout=60) == 0, tx.stderr()
    assert f"config {cfg}: " in tx.stderr() and "vendor=philips" in tx.stderr()
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["sent"] == 4 and summary["all_acked"] and summary["run_id"] == "nf1"
    rx.kill(15)
