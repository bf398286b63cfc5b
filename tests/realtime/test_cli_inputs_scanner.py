"""Bad input to the scanner-side commands (scanner replay/export/watch, receive, control, monitor, keys):
each is refused up front with an ``error:`` line that names the file or option and says what to do,
exit 2, and never a Python traceback. Real files, real processes, real sockets."""

from __future__ import annotations

import os

import nibabel as nib
import pytest
from nibabel.testing import data_path

EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")


def _refused(proc, *names: str, timeout: float = 60.0) -> str:
    """``proc`` exits 2 with one ``error:`` line naming each of ``names``, and no traceback; its stderr."""
    rc = proc.wait(timeout=timeout)
    err = proc.stderr()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    line = next((ln for ln in err.splitlines() if ln.startswith("error: ")), None)
    assert line is not None, err
    for name in names:
        assert name in line, (name, line)
    return line


def _head_c(src, dest, n_bytes: int) -> str:
    """``head -c n_bytes src > dest``: a copy cut short, as an interrupted transfer leaves it."""
    with open(src, "rb") as f:
        blob = f.read(n_bytes)
    with open(dest, "wb") as f:
        f.write(blob)
    return os.fspath(dest)


# ---- 1. a truncated or corrupt run ------------------------------------------------------------------------

@pytest.fixture
def damaged_runs(tmp_path):
    """nibabel's example4d.nii.gz cut to half its length, and with 100 of its compressed bytes flipped
    (the gzip CRC then fails), and its uncompressed .nii cut to half."""
    size = os.path.getsize(EXAMPLE4D)
    trunc = _head_c(EXAMPLE4D, tmp_path / "trunc.nii.gz", size // 2)
    blob = bytearray(open(EXAMPLE4D, "rb").read())
    for i in range(size // 3, size // 3 + 100):
        blob[i] ^= 0xFF
    flipped = tmp_path / "flipped.nii.gz"
    flipped.write_bytes(bytes(blob))
    full = tmp_path / "full.nii"
    nib.save(nib.load(EXAMPLE4D), full)
    trunc_nii = _head_c(full, tmp_path / "trunc.nii", os.path.getsize(full) // 2)
    return {"trunc": trunc, "flipped": os.fspath(flipped), "trunc_nii": trunc_nii}


@pytest.mark.parametrize("which", ["trunc", "flipped", "trunc_nii"])
def test_read_nifti_run_names_a_truncated_or_corrupt_file(damaged_runs, which):
    from realtime.nifti_io import read_nifti_run

    with pytest.raises(ValueError) as e:
        read_nifti_run(damaged_runs[which])
    msg = str(e.value)
    assert msg.startswith(f"{damaged_runs[which]}: truncated or corrupt (") and "re-copy or re-download it" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("which", ["trunc", "flipped"])
def test_iter_volumes_names_a_truncated_or_corrupt_gzip(damaged_runs, which):
    from realtime.nifti_io import iter_volumes

    vols = []
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        for v in iter_volumes(nib.load(damaged_runs[which])):
            vols.append(v)
    assert str(e.value).startswith(f"{damaged_runs[which]}: volume {len(vols)}: truncated or corrupt")
    assert len(vols) < 2  # it stopped at the damage, within the run's two volumes


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["trunc", "flipped"])
def test_scanner_replay_and_export_refuse_a_damaged_run(b2m_proc, endpoint, tmp_path, damaged_runs, which):
    path = damaged_runs[which]
    rp = b2m_proc("scanner", "replay", path, "--tr", "2", "--connect", endpoint, "--quiet", name="replay")
    line = _refused(rp, path, "truncated or corrupt", "re-copy or re-download")
    ex = b2m_proc("scanner", "export", path, tmp_path / "out", "--tr", "2", "--speed", "max", "--quiet",
                  name="export")
    assert _refused(ex, path) == line
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# ---- 2, 9. options checked before anything is read, written or sent --------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("option, value, says", [
    ("--tr", "-1", "--tr must be a positive number of seconds, got -1.0"),
    ("--tr", "0", "--tr must be a positive number of seconds, got 0.0"),
    ("--prefix", "../esc", "--prefix '../esc': give a plain file name prefix"),
    ("--prefix", "sub/vol", "--prefix 'sub/vol': give a plain file name prefix"),
    ("--prefix", "..", "--prefix '..': give a plain file name prefix"),
])
def test_scanner_export_refuses_a_bad_option_and_writes_nothing(b2m_proc, functional_nii, tmp_path, option, value,
                                                                 says):
    out = tmp_path / "sub" / "export"
    ex = b2m_proc("scanner", "export", functional_nii, out, option, value, "--speed", "max", "--quiet")
    _refused(ex, says)
    assert not (tmp_path / "sub").exists()  # nothing written, and nothing beside the folder either
    assert sorted(os.listdir(tmp_path)) == ["p0.err", "p0.out"]


def test_scanner_export_writes_with_a_plain_prefix(functional_nii, tmp_path):
    from realtime.scanner.export import export_run

    res = export_run(functional_nii, tmp_path / "out", speed=float("inf"), prefix="epi-run1")
    assert len(res.files) == 20
    assert all(os.path.dirname(f) == os.fspath(tmp_path / "out") for f in res.files)
    assert os.path.basename(res.files[0]) == "epi-run1_00001.nii"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option, value, says", [
    ("--tr", "-2", "--tr must be a positive number of seconds, got -2.0"),
    ("--tr", "nan", "--tr must be a positive number of seconds, got nan"),
    ("--idle-timeout", "-1", "--idle-timeout must be a positive number of seconds, got -1.0"),
    ("--poll", "0", "--poll must be a positive number of seconds, got 0.0"),
    ("--volumes", "0", "--volumes must be a whole number of at least 1, got 0"),
    ("--slices", "0", "--slices must be a whole number of at least 1, got 0"),
    ("--give-up", "-1", "--give-up must be 0 or more seconds, got -1.0"),
    ("--run-id", "_x", "--run-id '_x': use 1-128 characters"),
])
def test_scanner_watch_refuses_a_bad_option_before_watching(b2m_proc, endpoint, tmp_path, option, value, says):
    """Refused at once (no receiver is needed to find out, and none is sent a run end for no run)."""
    folder = tmp_path / "export"
    folder.mkdir()
    tx = b2m_proc("scanner", "watch", folder, "--vendor", "nifti", "--connect", endpoint, option, value, "--quiet")
    _refused(tx, says, timeout=30)
    assert "watching" not in tx.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option, value, says", [
    ("--tr", "-1.5", "--tr must be a positive number of seconds, got -1.5"),
    ("--tr", "0", "--tr must be a positive number of seconds, got 0.0"),
    ("--run-id", "_bad", "--run-id '_bad': use 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit"),
    ("--run-id", "has space", "--run-id 'has space'"),
])
def test_scanner_replay_refuses_a_bad_option_before_sending(b2m_proc, endpoint, tmp_path, serving, functional_nii,
                                                            option, value, says):
    """A receiver is listening: it is sent nothing at all, where before it was sent the whole run and
    refused every message of it."""
    from protocols.session import SessionRecord

    with serving(tmp_path / "session", endpoint):
        rp = b2m_proc("scanner", "replay", functional_nii, option, value, "--speed", "max", "--connect", endpoint,
                      "--quiet")
        _refused(rp, says, timeout=30)
    assert SessionRecord(str(tmp_path / "session"), sync=False).runs == {}


# ---- 3. endpoints and ports: one check, before any socket ------------------------------------------------

@pytest.mark.parametrize("endpoint, bind, says", [
    ("nowhere", False, "'nowhere' is not an endpoint: use tcp://HOST:PORT (port 1-65535) or ipc://PATH"),
    ("tcp://127.0.0.1:99999", True, "port '99999' is not a TCP port; use tcp://HOST:PORT (port 0-65535"),
    ("tcp://127.0.0.1:99999", False, "port '99999' is not a TCP port; use tcp://HOST:PORT (port 1-65535)"),
    ("tcp://127.0.0.1:0", False, "port '0' is not a TCP port"),
    ("tcp://127.0.0.1:*", False, "port '*' is not a TCP port"),
    ("tcp://127.0.0.1", True, "is not an endpoint: use tcp://HOST:PORT"),
    ("tcp://:5555", True, "is not an endpoint: use tcp://HOST:PORT"),
    ("tcp://[::1:5555", False, "an IPv6 address goes in brackets"),
    ("ipc://", True, "ipc:// needs a path"),
    ("http://127.0.0.1:5555", False, "is not an endpoint"),
])
def test_check_endpoint_refuses_what_is_not_an_endpoint(endpoint, bind, says):
    from realtime.transport import EndpointError, TransportError, check_endpoint

    with pytest.raises(EndpointError) as e:
        check_endpoint(endpoint, bind=bind)
    assert isinstance(e.value, TransportError) and isinstance(e.value, ValueError)
    assert repr(endpoint) in str(e.value) and says in str(e.value)


@pytest.mark.parametrize("endpoint, bind", [
    ("tcp://127.0.0.1:5555", False), ("tcp://127.0.0.1:*", True), ("tcp://127.0.0.1:0", True),
    ("tcp://*:5555", True), ("tcp://[::1]:5555", False), ("tcp://scanner-host.local:5555", False),
    ("ipc:///tmp/b2m.sock", True), ("inproc://link", True), ("tcp://127.0.0.1:65535", False),
])
def test_check_endpoint_takes_every_form_the_commands_use(endpoint, bind):
    from realtime.transport import check_endpoint

    assert check_endpoint(endpoint, bind=bind) == endpoint


def test_every_binder_refuses_a_port_out_of_range_instead_of_wrapping_it(tmp_path):
    """ZeroMQ took tcp://127.0.0.1:99999 as port 34463; the socket module raised OverflowError."""
    from realtime.monitor import MonitorServer, MonitorState
    from realtime.receiver import Receiver
    from realtime.results import PynealResultsServer, ResultsPublisher
    from realtime.session.operator import ControlServer
    from realtime.transport import EndpointError

    bad = "tcp://127.0.0.1:99999"
    for make in (lambda: Receiver(tmp_path / "rx", bad), lambda: ResultsPublisher(bad),
                 lambda: ControlServer(None, bad)):
        with pytest.raises(EndpointError, match=r"'tcp://127.0.0.1:99999' is not an endpoint: port '99999'"):
            make()
    assert not (tmp_path / "rx").exists()  # refused before touching the disk
    with pytest.raises(EndpointError, match=r"--pyneal-port 99999: port 99999 is not a TCP port; use 0-65535"):
        PynealResultsServer(port=99999)
    with pytest.raises(EndpointError, match=r"--http 127.0.0.1:99999: port 99999 is not a TCP port"):
        MonitorServer(MonitorState("tcp://127.0.0.1:5556"), "127.0.0.1", 99999)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    (("--bind", "tcp://127.0.0.1:99999"), ["'tcp://127.0.0.1:99999' is not an endpoint", "port '99999'",
                                          "tcp://HOST:PORT (port 0-65535"]),
    (("--bind", "nowhere"), ["'nowhere' is not an endpoint: use tcp://HOST:PORT"]),
    (("--bind", "tcp://nowhere.invalid:5599", "--insecure"),
     ["cannot bind tcp://nowhere.invalid:5599: 'nowhere.invalid' is neither an address of this computer nor one "
      "of its network interfaces", "tcp://127.0.0.1:PORT"]),
    (("--bind", "tcp://nowhere.invalid:5599"), ["cannot bind tcp://nowhere.invalid:5599: 'nowhere.invalid'"]),
])
def test_receive_refuses_an_endpoint_it_cannot_bind_and_says_why(b2m_proc, tmp_path, args, says):
    """Not "reachable from the network, no CURVE keys", nor "another receiver on that port"."""
    rx = b2m_proc("receive", *args, "--out", tmp_path / "rx")
    line = _refused(rx, *says, timeout=30)
    assert "another receiver" not in line and "CURVE" not in line


def test_a_taken_port_still_says_another_receiver(tmp_path, endpoint):
    import zmq

    from realtime.transport import TransportError, bind_router

    ctx = zmq.Context()
    first = bind_router(ctx, endpoint)
    try:
        with pytest.raises(TransportError, match=f"cannot bind {endpoint}: .*Is another receiver running"):
            bind_router(ctx, endpoint)
    finally:
        first.close(0)
        ctx.term()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, says", [
    (("control", "status", "--connect", "nowhere"), ["--connect 'nowhere' is not an endpoint: use tcp://HOST:PORT"]),
    (("control", "mute", "--connect", "tcp://127.0.0.1:99999"), ["--connect 'tcp://127.0.0.1:99999'", "port '99999'"]),
    (("monitor", "--results", "nowhere", "--http", "127.0.0.1:0"), ["--results 'nowhere' is not an endpoint"]),
    (("monitor", "--http", "127.0.0.1:99999"), ["--http 127.0.0.1:99999: port 99999 is not a TCP port; use 0-65535"]),
    (("scanner", "watch", ".", "--vendor", "nifti", "--connect", "nowhere", "--quiet"),
     ["'nowhere' is not an endpoint"]),
])
def test_connecting_commands_refuse_a_malformed_endpoint(b2m_proc, args, says):
    """A ZMQError traceback (control, monitor) or an OverflowError (monitor --http) before."""
    _refused(b2m_proc(*args), *says, timeout=30)


@pytest.mark.timeout(60)
def test_scanner_replay_refuses_a_malformed_connect(b2m_proc, functional_nii):
    _refused(b2m_proc("scanner", "replay", functional_nii, "--connect", "tcp://127.0.0.1:70000", "--quiet"),
             "'tcp://127.0.0.1:70000' is not an endpoint", timeout=30)


# ---- 4. control --timeout -------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_control_refuses_a_timeout_that_would_wait_for_ever(b2m_proc, endpoint, value):
    """--timeout -1 waited until Ctrl-C (a negative poll timeout is infinite)."""
    _refused(b2m_proc("control", "status", "--connect", endpoint, "--timeout", value),
             "--timeout must be a positive number of seconds", timeout=30)


def test_control_with_no_session_still_exits_3(b2m_proc, endpoint):
    p = b2m_proc("control", "status", "--connect", endpoint, "--timeout", "0.2")
    assert p.wait(timeout=30) == 3
    assert f"no session answered on {endpoint} within 0.2 s" in p.stderr() and "Traceback" not in p.stderr()


# ---- 5. keys: the name is positional ----------------------------------------------------------------------

def test_keys_made_twice_says_to_choose_another_name_not_a_name_option(b2m_proc, tmp_path):
    first = b2m_proc("keys", "receiver", "--out", tmp_path / "keys1")
    assert first.wait(timeout=30) == 0
    secret = tmp_path / "keys1" / "receiver.key_secret"
    before = secret.read_bytes()
    line = _refused(b2m_proc("keys", "receiver", "--out", tmp_path / "keys1"), f"{secret} already exists",
                    "choose another NAME or --out folder", timeout=30)
    assert "--name" not in line
    assert secret.read_bytes() == before  # the old key is kept


# ---- 6. NIfTI volumes keep their own index when a file is bad ---------------------------------------------

class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _nifti_folder(folder, source, names, bad=()):
    """One 3-D NIfTI per volume of ``source`` as ``names[k]``; the names in ``bad`` get junk instead."""
    import numpy as np

    img = nib.load(source)
    data = np.asanyarray(img.dataobj.get_unscaled())
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(names):
        if name in bad:
            (folder / name).write_bytes(b"not a NIfTI" * 50)
        else:
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data[..., k]), img.affine), folder / name)
    return data


def _scan_all(w, clock, rounds=40):
    got = []
    for _ in range(rounds):
        got += w.scan()
        clock.t += 0.1
    return got


@pytest.mark.parametrize("names, bad, indices, bad_index", [
    # 1-based numbers, as scanners and b2m scanner export write them: vol_00001.nii is volume 0
    ([f"vol_{k:05d}.nii" for k in range(1, 6)], {"vol_00002.nii"}, [0, 2, 3, 4], 1),
    # a series numbered from 0, whose first file is the bad one: the numbering is still taken from it
    ([f"img{k}.nii" for k in range(0, 5)], {"img0.nii"}, [1, 2, 3, 4], 0),
    # Siemens-style session_series_volume names: the last number is the volume's
    ([f"001_000012_{k:06d}.nii" for k in range(1, 5)], {"001_000012_000004.nii"}, [0, 1, 2], 3),
    # no number in the names: the order found, a bad file keeping its place
    (["a.nii", "b.nii", "c.nii", "d.nii"], {"b.nii"}, [0, 2, 3], 1),
])
def test_nifti_watcher_indexes_volumes_by_file_not_by_arrival(tmp_path, functional_nii, names, bad, indices,
                                                              bad_index):
    import numpy as np

    from realtime.scanner.watch import FolderWatcher

    clock = _Clock()
    data = _nifti_folder(tmp_path / "export", functional_nii, names, bad)
    w = FolderWatcher(tmp_path / "export", "nifti", give_up_s=0.5, clock=clock, events=False, include_existing=True)
    got = _scan_all(w, clock)
    assert [v.index for v in got] == indices
    for v in got:  # each volume is the source's volume of that index, not its neighbour's
        k = names.index(os.path.basename(v.files[0]))
        assert v.index == k
        np.testing.assert_array_equal(v.data, data[..., k])
    assert set(w.bad) == set(bad) and w.bad_indices() == {bad_index}
    w.close()


def test_nifti_watcher_reads_files_in_the_order_they_come(tmp_path, functional_nii):
    """Files written one by one, a bad one in the middle: the one after it is still volume 2."""
    from realtime.scanner.watch import FolderWatcher

    clock = _Clock()
    folder = tmp_path / "export"
    folder.mkdir()
    w = FolderWatcher(folder, "nifti", give_up_s=0.3, clock=clock, events=False)
    got = []
    for k, name in enumerate(["v_1.nii", "v_2.nii", "v_3.nii"]):
        _nifti_folder(folder, functional_nii, ["v_1.nii", "v_2.nii", "v_3.nii"][: k + 1],
                      bad={"v_2.nii"})
        got += _scan_all(w, clock, rounds=3)  # the bad one is not yet given up when the next one comes
    got += _scan_all(w, clock, rounds=10)
    assert [v.index for v in got] == [0, 2] and list(w.bad) == ["v_2.nii"]
    w.close()


def test_nifti_volume_number_is_the_last_number_of_the_name():
    from realtime.scanner.watch import nifti_volume_number

    assert nifti_volume_number("vol_00007.nii") == 7
    assert nifti_volume_number("sub-01_run-2_vol0012.nii.gz") == 12
    assert nifti_volume_number("001_000012_000005.NII") == 5
    assert nifti_volume_number("epi.nii") is None


@pytest.mark.timeout(120)
def test_watch_with_a_bad_file_sends_the_rest_at_their_index_and_exits_1(b2m_proc, endpoint, serving,
                                                                         functional_nii, tmp_path):
    """The run's 3rd file is corrupt: volumes 0, 1, 3, 4, 5 are recorded at those indices with the source's
    data, volume 2 is reported missing in the summary, and the exit code says the run is not whole."""
    import json

    import numpy as np

    from protocols.session import SessionRecord
    from realtime.scanner.export import export_run

    folder = tmp_path / "export"
    short = tmp_path / "short.nii"
    src = nib.load(functional_nii)
    data = np.asanyarray(src.dataobj.get_unscaled())[..., :6]
    nib.save(nib.Nifti1Image(data, src.affine, src.header), short)
    export_run(short, folder, speed=float("inf"))
    (folder / "vol_00003.nii").write_bytes(b"\0" * 100)  # cut short: not a NIfTI
    with serving(tmp_path / "session", endpoint):
        tx = b2m_proc("scanner", "watch", folder, "--vendor", "nifti", "--connect", endpoint, "--include-existing",
                      "--volumes", 6, "--idle-timeout", 1, "--give-up", 0.3, "--run-id", "gap", "--quiet")
        rc = tx.wait(timeout=60)
        err = tx.stderr()
        assert rc == 1, err
        assert "Traceback" not in err and "vol_00003.nii" in err and "went without 1 volume(s)" in err
    summary = json.loads(tx.stdout().strip().splitlines()[-1])
    assert summary["missing_volumes"] == [2] and list(summary["bad_files"]) == ["vol_00003.nii"]
    assert summary["sent"] == 5 and summary["all_acked"]
    run = SessionRecord(str(tmp_path / "session"), sync=False).runs["gap"]
    assert sorted(run.received) == [0, 1, 3, 4, 5] and run.missing() == [2] and run.n_volumes == 6
    for k in run.received:
        np.testing.assert_array_equal(run.volume(k), data[..., k])


# ---- 7. messages point to a file that is in the repository ------------------------------------------------

def test_audio_messages_point_to_the_readme_section_that_starts_jackd():
    import subprocess
    import sys

    from conftest import REPO
    from realtime.audio._device import _device_listing

    readme = open(os.path.join(REPO, "README.md")).read()
    assert "## A session in one minute" in readme
    section = readme.split("## A session in one minute", 1)[1].split("\n## ", 1)[0]
    assert "jackd -d dummy -r 48000 -p 256" in section
    listing = _device_listing([])
    assert "README.md, 'A session in one minute'" in listing and "DESIGN.md" not in listing
    # jackd not on PATH: start_jackd's message, from a real process that cannot find it
    code = ("from realtime.audio.jack import start_jackd\n"
            "try:\n    start_jackd('.')\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH="/nonexistent"))
    assert "jackd is not installed" in out.stdout, out.stderr
    assert "README.md, 'A session in one minute'" in out.stdout and "DESIGN.md" not in out.stdout


# ---- 8. a damaged decoder.onnx whose sha256 matches ---------------------------------------------------------

def test_a_decoder_onnx_that_does_not_load_is_named_with_what_to_do(tmp_path, fmri1_nii):
    import json

    from protocols._manifest import sha256_file
    from realtime.decoder import Decoder
    from session_kit import make_bundle

    bundle = make_bundle(str(tmp_path), fmri1_nii)
    Decoder(bundle)  # loads as made
    onnx = os.path.join(bundle, "decoder.onnx")
    blob = open(onnx, "rb").read()
    with open(onnx, "wb") as f:  # damaged before the manifest was written: the sha256 matches
        f.write(blob[: len(blob) // 3] + b"\xff" * 64)
    man = os.path.join(bundle, "manifest.json")
    m = json.load(open(man))
    m["files"]["decoder.onnx"] = sha256_file(onnx)
    json.dump(m, open(man, "w"))
    with pytest.raises(ValueError) as e:
        Decoder(bundle)
    msg = str(e.value)
    assert msg.startswith(f"{onnx}: onnxruntime cannot load it (") and "re-export the bundle with `b2m train`" in msg
