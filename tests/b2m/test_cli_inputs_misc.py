"""``b2m`` as a user runs it, given bad input: a real process each time, a clear message on stderr that names
the option or file and says what to do, no traceback, and a meaningful exit code (2 bad input, 130
interrupted). The demo library, bundle and session of these tests are built here, small."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def b2m(*args, cwd=REPO, timeout=300, env=None):
    """Run ``python -m b2m ARGS`` in the repository; the finished process."""
    return subprocess.run([sys.executable, "-m", "b2m", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, COLUMNS="200", **(env or {})))


def assert_refused(r, *names, rc=2):
    """Exit code ``rc``, every one of ``names`` in the one error line, and no traceback."""
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for name in names:
        assert str(name) in r.stderr, (name, r.stderr)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A small real library: 3 generated clips (with genres), musicnn-msd embeddings."""
    out = tmp_path_factory.mktemp("lib") / "lib"
    r = b2m("library", "build", "--generate", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


# item: library build --out --------------------------------------------------------------------------------------

def test_library_build_refuses_an_out_that_is_a_bundle_and_leaves_it_untouched(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = json.dumps({"format": "b2m-model-bundle", "version": 1, "files": {}})
    (bundle / "manifest.json").write_text(manifest)
    (bundle / "decoder.onnx").write_bytes(b"onnx")
    r = b2m("library", "build", "--generate", "2", "--out", bundle)
    assert_refused(r, bundle, "--out", "b2m-model-bundle")
    assert "new folder" in r.stderr
    assert (bundle / "manifest.json").read_text() == manifest  # not overwritten
    assert sorted(os.listdir(bundle)) == ["decoder.onnx", "manifest.json"]  # nothing added


def test_library_build_refuses_a_folder_of_other_files_or_a_file(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = b2m("library", "build", "--generate", "2", "--out", other)
    assert_refused(r, other, "--out", "notes.txt")
    assert sorted(os.listdir(other)) == ["notes.txt"]
    r = b2m("library", "build", "--generate", "2", "--out", other / "notes.txt")
    assert_refused(r, other / "notes.txt", "--out is a file")


def test_library_build_continues_its_own_library_and_a_partial_build(library, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    r = b2m("library", "build", "--generate", "4", "--out", lib)  # resumable: the 3 clips there are kept
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["n_clips"], summary["new_clips"]) == (4, 1)
    from music.library import check_library_out

    partial = tmp_path / "partial"  # interrupted before its first manifest: only .build and audio/
    shutil.copytree(library / ".build", partial / ".build")
    (partial / "audio").mkdir()
    check_library_out(str(partial))  # accepted, as are an empty folder and a new path
    (tmp_path / "empty").mkdir()
    check_library_out(str(tmp_path / "empty"))
    check_library_out(str(tmp_path / "new"))


# item: --config -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, said", [
    (None, "a folder, not a config file"),
    (b"[session]\nlevel-dbfs = \"\xff\xfe\"\n", "not a text file in UTF-8"),
    (b"[session]\nlevel-dbfs = \"loud\"\n", "[session] level-dbfs: 'loud' is not a level"),
    (b"[session]\nlevel-dbfs = 5\n", "[session] level-dbfs: "),
    (b"[library.eval]\nfolds = 1\n", "[library.eval] folds: 1 is too small: give the cross-validation folds (2 or "
                                     "more)"),
])
def test_a_config_file_that_cannot_be_used_is_named_with_its_table_and_key(tmp_path, content, said):
    cfg = tmp_path / "site.toml"
    if content is None:
        cfg.mkdir()
    else:
        cfg.write_bytes(content)
    r = b2m("--config", cfg, "keys", "scanner", "--out", tmp_path / "keys")
    assert_refused(r, f"error: {cfg}: {said}")
    assert not (tmp_path / "keys").exists()  # stopped before the command ran


def test_a_config_value_goes_through_the_options_own_check(tmp_path):
    from b2m.cli import build_parser
    from b2m.config import apply_config

    cfg = tmp_path / "site.toml"
    cfg.write_text("[session]\nlevel-dbfs = -30\n")
    parser = build_parser()
    assert apply_config(parser, str(cfg), ("session",)) == {"level_dbfs": -30.0}
    assert parser.parse_args(["session", "--out", "x"]).level_dbfs == -30.0
    assert parser.parse_args(["session", "--out", "x", "--level-dbfs", "none"]).level_dbfs is None


# item: Ctrl-C while b2m starts ----------------------------------------------------------------------------------

def test_an_interrupt_while_the_commands_load_exits_130_without_a_traceback():
    """A real SIGINT, sent by the process to itself as it imports ``b2m session``'s module."""
    code = ("import os, runpy, signal, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'b2m.commands.session':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['b2m', 'keys', '--help']\n"
            "runpy.run_module('b2m', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_refused(r, "interrupted", rc=130)
    assert r.stdout == ""  # the help was never printed: it stopped there


# item: OS errors on an --out --------------------------------------------------------------------------------------

def scores_bundle(folder):
    """A bundle folder as far as `b2m group` reads it: metrics.json with per-clip Test scores of 4 excerpts."""
    folder.mkdir()
    per_clip = {"excerpt": ["blues.00098", "jazz.00003", "rock.00051", "pop.00010"],
                "genre": ["blues", "jazz", "rock", "pop"], "identification": [1.0, 0.75, 0.5, 1.0],
                "identification_centred": [1.0, 0.5, 0.75, 1.0], "within_genre": [None, None, None, None]}
    (folder / "metrics.json").write_text(json.dumps({"config": {"subject": "001"}, "causal": {"per_clip": per_clip}}))
    return folder


def test_an_out_that_is_a_file_is_named_with_its_option_and_what_to_do(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    bundle = scores_bundle(tmp_path / "bundle")
    for args in (["group", bundle, "--out", afile, "--boot", "100"], ["keys", "scanner", "--out", afile]):
        r = b2m(*args)
        assert_refused(r, f"error: --out {afile}: is a file: give a folder path that does not exist yet or is a "
                          "folder")
        assert "Errno" not in r.stderr and r.stdout == ""
    r = b2m("keys", "scanner", "--out", afile / "sub")  # a file where a folder is expected, on the way
    assert_refused(r, f"--out {afile / 'sub'}", f"a file stands where a folder is expected ({afile})")
    r = b2m("group", bundle, "--out", tmp_path / "g", "--boot", "100")  # and a good one is written
    assert r.returncode == 0, r.stderr
    assert "identification (raw)" in r.stdout and (tmp_path / "g" / "group.json").exists()


def test_an_out_that_cannot_be_made_says_where(tmp_path):
    r = b2m("keys", "scanner", "--out", "/proc/b2m-no/keys")
    assert_refused(r, "--out /proc/b2m-no/keys: /proc/b2m-no: cannot be made there: give a path in a folder you "
                      "can write to")
    relative = b2m("keys", "scanner", "--out", "afile", cwd=tmp_path, env={"PYTHONPATH": REPO})
    assert relative.returncode == 0  # a relative --out is made in the working folder
    (tmp_path / "afile2").write_text("")
    relative = b2m("keys", "scanner", "--out", "afile2", cwd=tmp_path, env={"PYTHONPATH": REPO})
    assert_refused(relative, "error: --out afile2: is a file")  # named as given


def test_describe_os_error_keeps_a_commands_own_message_and_names_a_file_where_a_folder_is(tmp_path):
    from b2m.cli import describe_os_error

    own = FileNotFoundError("/data/ds: dataset folder not found; give the BIDS root")
    assert describe_os_error(own) == str(own)
    afile = tmp_path / "f"
    afile.write_text("")
    try:
        open(afile / "x")
    except OSError as e:
        said = describe_os_error(e, {str(tmp_path / "f" / "x"): ("--model", "f/x")})
    assert said == f"--model f/x: a file stands where a folder is expected ({afile})"


def test_group_says_a_bundle_folder_is_expected_for_a_file(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "metrics.json").write_text("{}")
    r = b2m("group", bundle / "metrics.json", "--out", tmp_path / "g")
    assert_refused(r, f"BUNDLE {bundle / 'metrics.json'}: a file, not a bundle folder", "metrics.json")
    assert "metrics.json/metrics.json" not in r.stderr


# item: library search and eval options --------------------------------------------------------------------------

@pytest.mark.parametrize("args, said", [
    (["eval", "-k", "0"], "argument -k: 0 is too small"),
    (["eval", "-k", "-1"], "argument -k: -1 is too small"),
    (["eval", "--folds", "1"], "argument --folds: 1 is too small: give the cross-validation folds (2 or more)"),
    (["search", "--tag", "jazz", "-k", "-3"], "argument -k: -3 is too small: give how many results (1 or more)"),
    (["search", "--tag", "jazz", "-k", "0"], "argument -k: 0 is too small"),
    (["search", "--tag", "jazz", "-k", "many"], "argument -k: 'many' is not a whole number"),
])
def test_library_k_and_folds_are_checked_before_anything_runs(library, args, said):
    r = b2m("library", args[0], library, *args[1:])
    assert_refused(r, said)
    assert r.stdout == "" and "sklearn" not in r.stderr


def test_library_search_vector_must_be_one_embedding_in_a_npy(library, tmp_path):
    import numpy as np

    emb = np.load(library / "embeddings.npy")
    dim = emb.shape[1]
    expected = f"give a .npy of one embedding vector, shape ({dim},)"
    for path, said in [(library / "manifest.json", "not a .npy array"), (library / "beats.npz", "an .npz archive, not a .npy array"),
                       (library / "embeddings.npy", f"shape {emb.shape}")]:
        r = b2m("library", "search", library, "--vector", path)
        assert_refused(r, f"--vector {path}: {said}; {expected}")
    np.save(tmp_path / "short.npy", emb[0, :10])
    assert_refused(b2m("library", "search", library, "--vector", tmp_path / "short.npy"), "shape (10,)", expected)
    np.save(tmp_path / "one.npy", emb[1])
    r = b2m("library", "search", library, "--vector", tmp_path / "one.npy", "-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(hits) == 2 and hits[0]["rank"] == 1 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_library_k_is_checked_where_it_is_used_too(library):
    import numpy as np

    from music.library import Library
    from music.library.evaluate import knn_genre_accuracy

    lib = Library(library)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k \\(how many results\\) must be a whole number of 1 or more"):
            lib.search(np.asarray(lib.embeddings[0]), bad)
        with pytest.raises(ValueError, match="k \\(how many results\\)"):
            lib.search_tag(lib.tag_names[0], bad)
    with pytest.raises(ValueError, match="folds must be a whole number of 2 or more, got 1"):
        knn_genre_accuracy(np.eye(4), ["a", "a", "b", "b"], k=1, folds=1)
    with pytest.raises(ValueError, match="k \\(neighbours voting on a genre\\)"):
        knn_genre_accuracy(np.eye(4), ["a", "a", "b", "b"], k=0, folds=2)


# item: present --out and --rms-dbfs -----------------------------------------------------------------------------

@pytest.fixture
def run_design(tmp_path):
    """A one-excerpt ds003720-style run (4 s of a GTZAN-named 220 Hz tone): (events.tsv, stimuli folder)."""
    import numpy as np
    import soundfile as sf

    stimuli = tmp_path / "gtzan"
    stimuli.mkdir()
    t = np.arange(22050 * 8) / 22050
    sf.write(stimuli / "blues.00098.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\tgenre\ttrack\tstart\tend\n0\t4\tblues\t98\t1\t5\n")
    return events, stimuli


@pytest.mark.parametrize("where, said", [
    ("/proc/played.tsv", "cannot be written"),
    ("{tmp}/nodir/played.tsv", "its folder {tmp}/nodir does not exist"),
    ("{tmp}", "a folder; give the events.tsv file to write in it"),
])
def test_present_checks_out_before_the_trigger_so_no_run_is_lost(run_design, tmp_path, where, said):
    events, stimuli = run_design
    out = where.format(tmp=tmp_path)
    r = b2m("present", events, "--stimuli", stimuli, "--audio", f"wav:{tmp_path}/heard.wav", "--trigger", "now",
            "--out", out, "--quiet")
    assert_refused(r, f"error: --out {out}: {said.format(tmp=tmp_path)}", "nothing was played")
    assert "ready" not in r.stderr and "trigger" not in r.stderr.replace("--trigger", "")  # never started
    assert not os.path.exists(tmp_path / "heard.wav") or os.path.getsize(tmp_path / "heard.wav") < 1000


def test_present_rms_dbfs_is_limited_like_the_sessions_level(run_design, tmp_path):
    events, stimuli = run_design
    base = ["present", events, "--stimuli", stimuli, "--audio", f"wav:{tmp_path}/heard.wav", "--trigger", "now",
            "--out", tmp_path / "played.tsv", "--quiet"]
    for level in ("10", "-61", "nan"):
        r = b2m(*base, "--rms-dbfs", level)
        assert_refused(r, f"argument --rms-dbfs: {level} dBFS RMS is out of range: give -60 to -3")
    assert_refused(b2m(*base, "--rms-dbfs", "loud"), "argument --rms-dbfs: 'loud' is not a level")
    r = b2m(*base, "--rms-dbfs", "-20")
    assert r.returncode == 0, r.stderr
    import numpy as np
    import soundfile as sf

    heard, _ = sf.read(tmp_path / "heard.wav", dtype="float64")
    loud = heard[np.abs(heard[:, 0]) > 0][:, 0]
    assert 20 * np.log10(np.sqrt(np.mean(loud ** 2))) == pytest.approx(-20, abs=1.0)  # 2 s fades: about -20
    assert (tmp_path / "played.tsv").read_text().splitlines()[0].startswith("onset\tduration")


# item: what is wrong with an address or a key path --------------------------------------------------------------

def test_a_monitor_host_that_is_not_this_computers_is_said_to_be_the_host(tmp_path):
    r = b2m("monitor", "--results", "tcp://127.0.0.1:5999", "--http", "no-such-host.invalid:8089", "--insecure")
    assert_refused(r, "--http no-such-host.invalid:8089", "that host is not an address of this computer")
    assert "choose another port" not in r.stderr


def test_a_key_folder_given_for_a_key_file_is_said_to_be_a_folder(tmp_path):
    r = b2m("receive", "--out", tmp_path / "rec", "--curve-secret", tmp_path)
    assert_refused(r, str(tmp_path), "a folder, not a key file", "NAME.key_secret")
