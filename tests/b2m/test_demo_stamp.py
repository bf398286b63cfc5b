"""``b2m demo`` reuses an interrupted run's dataset, bundle and library, but never another version's."""

import json
import os
import shutil

from conftest import REPO

from b2m.demo.pipeline import REUSED, DemoConfig, _clear_if_stale, demo_stamp


def _made(out):
    for d in REUSED:
        os.makedirs(os.path.join(out, d), exist_ok=True)
        with open(os.path.join(out, d, "marker"), "w") as f:
            f.write("x")


def test_the_stamp_follows_the_projects_files_and_the_settings(tmp_path):
    root = tmp_path / "proj"
    for pkg in ("b2m", "music", "offline_training", "realtime", "protocols"):
        shutil.copytree(os.path.join(REPO, pkg), root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    cfg = DemoConfig(out=str(tmp_path / "demo"))
    a = demo_stamp(cfg, root)
    assert demo_stamp(cfg, root) == a
    (root / "realtime" / "feedback.py").write_text((root / "realtime" / "feedback.py").read_text() + "\n# edit\n")
    b = demo_stamp(cfg, root)
    assert b["project_sha256"] != a["project_sha256"]
    (root / "music" / "__pycache__").mkdir(exist_ok=True)
    (root / "music" / "__pycache__" / "x.pyc").write_bytes(b"compiled")  # byte code is not the project
    assert demo_stamp(cfg, root) == b
    assert demo_stamp(DemoConfig(out=cfg.out, seed=1), root)["seed"] == 1


def test_a_stale_demo_folder_is_made_again_and_a_current_one_reused(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"))
    stamp = {"project_sha256": "aaaa", "grid": "small", "train_runs": 4, "test_run": 1, "seed": 0}
    _made(cfg.out)
    assert _clear_if_stale(cfg, stamp) == list(REUSED)  # made before stamps existed: made again
    assert not any(os.path.exists(os.path.join(cfg.out, d)) for d in REUSED)
    assert json.load(open(os.path.join(cfg.out, "stamp.json"))) == stamp
    _made(cfg.out)
    assert _clear_if_stale(cfg, stamp) == []  # an interrupted run of the same code: reused
    assert all(os.path.exists(os.path.join(cfg.out, d, "marker")) for d in REUSED)
    assert _clear_if_stale(cfg, stamp | {"project_sha256": "bbbb"}) == list(REUSED)  # other code
    _made(cfg.out)
    assert _clear_if_stale(cfg, stamp | {"project_sha256": "bbbb", "seed": 3}) == list(REUSED)  # other settings


def test_the_demo_resimulates_an_unfinished_or_unreadable_dataset_and_reuses_a_finished_one(tmp_path, caplog):
    from b2m.demo.pipeline import _simulate
    from offline_training.simulate import read_simulation_config

    cfg = DemoConfig(out=str(tmp_path / "demo"), grid="tiny", train_runs=1, test_run=1)
    config = tmp_path / "demo" / "dataset" / "derivatives" / "simulation" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("{cut short")  # as if the disk filled while it was written
    stages = []
    ds = _simulate(cfg, lambda stage, done, total: stages.append(stage))
    assert "config.json: not valid JSON" in caplog.text and "simulating again" in caplog.text
    assert "volumes" in stages  # simulated again
    conf = read_simulation_config(ds)
    assert (conf["config"]["grid"], conf["config"]["train_runs"], conf["config"]["seed"]) == ("tiny", 1, 0)
    stages.clear()
    assert _simulate(cfg, lambda stage, done, total: stages.append(stage)) == ds
    assert stages == []  # finished: reused as is
