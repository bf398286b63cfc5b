"""``train()`` end to end on a tiny BIDS dataset, and its bundle run in a fresh process
that may import nothing but numpy, onnxruntime and ``protocols`` (issue 6, item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from music.embedding import Embedder, Embedding, register_embedder

from conftest import REPO

SR = 8000
TR = 1.5
N_VOL = 50
SHAPE = (12, 12, 8)
GENRES = ("jazz", "metal")


class BandsEmbedder(Embedder):
    """4-d embedding: log energy in 4 frequency bands per 3 s window (a stand-in for musicnn)."""

    id, version, dim, sr, window_s = "tiny-bands", "1", 4, SR, 3.0

    def __init__(self, hop_s: float = 3.0):
        self.hop_s = hop_s

    def embed(self, audio, sr):
        win, hop = int(self.window_s * sr), int(round(self.hop_s * sr))
        starts = np.arange(0, max(len(audio) - win, 0) + 1, hop)
        rows = []
        for s in starts:
            spec = np.abs(np.fft.rfft(audio[s:s + win])) ** 2
            rows.append([np.log(band.sum() + 1e-6) for band in np.array_split(spec, 4)])
        return Embedding(windows=np.asarray(rows, np.float32), times_s=starts / sr)


def _events(clips) -> str:
    rows = ["onset\tduration\tgenre\ttrack\tstart\tend"]
    for i, (genre, track) in enumerate(clips):
        rows.append(f"{i * 15}\t15\t'{genre}'\t{track}\t2\t17")
    return "\r\n".join(rows) + "\r\n"


def _tiny_dataset(root, rng, subject="001"):
    """2 Training runs of 4 clips, 2 Test runs repeating 4 other clips; voxels follow the clips."""
    stim = root / "stimuli"
    stim.mkdir(parents=True, exist_ok=True)
    t = np.arange(30 * SR) / SR
    clips = [(g, k) for k in range(6) for g in GENRES]  # 12 tracks
    for genre, track in clips:
        f0 = 150 * (1 + track) * (2 if genre == "metal" else 1)
        sig = np.sin(2 * np.pi * f0 * t) + 0.3 * rng.standard_normal(len(t))
        sf.write(stim / f"{genre}.{track:05d}.wav", (0.2 * sig).astype(np.float32), SR)
    runs = {("Training", 1): clips[0:4], ("Training", 2): clips[4:8],
            ("Test", 1): clips[8:12], ("Test", 2): clips[8:12][::-1]}
    func = root / f"sub-{subject}" / "func"
    func.mkdir(parents=True)
    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=float) for s in SHAPE], indexing="ij")
    brain = 1000 * np.exp(-(((ii - 5.5) / 4) ** 2 + ((jj - 5.5) / 4) ** 2 + ((kk - 3.5) / 3) ** 2))
    tuning = rng.standard_normal(SHAPE + (4,)) * (brain[..., None] > 500)
    emb = BandsEmbedder()
    for (task, run), rclips in runs.items():
        stem = f"sub-{subject}_task-{task}_run-{run:02d}"
        (func / f"{stem}_events.tsv").write_text(_events(rclips), newline="")
        (func / f"{stem}_bold.json").write_text(json.dumps({"RepetitionTime": TR, "TaskName": task}))
        drive = np.zeros((N_VOL, 4))
        for i, (genre, track) in enumerate(rclips):
            audio, _ = sf.read(stim / f"{genre}.{track:05d}.wav")
            e = emb.embed(audio[2 * SR:17 * SR], SR).clip
            drive[i * 10 + 3:(i + 1) * 10 + 3] = e - 5.0  # 10 TRs per clip, 3 TRs of delay
        data = brain[..., None] + 3.0 * np.einsum("xyzk,tk->xyzt", tuning, drive)
        data += 4 * rng.standard_normal(data.shape) + 100
        img = nib.Nifti1Image(np.round(data).astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((3.0, 3.0, 3.0, TR))
        nib.save(img, func / f"{stem}_bold.nii.gz")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from offline_training.train import TrainConfig, train

    register_embedder("tiny-bands", lambda **kw: BandsEmbedder(**kw))
    root = tmp_path_factory.mktemp("ds")
    _tiny_dataset(root, np.random.default_rng(0))
    out = root / "bundle"
    # the GLM detrend: these runs last 75 s, so the default 60 s EMA high-pass would still be averaging its
    # first volumes at the end of the run and would take out most of each run's first clip (the EMA path
    # is trained below with a time constant that fits these runs)
    cfg = TrainConfig(embedder="tiny-bands", n_voxels=60, motion=False, alphas=(0.1, 10.0, 1e3, 1e5),
                      detrend="causal")
    metrics = train(str(root), str(out), cfg)
    return root, out, metrics


def test_train_writes_metrics_config_and_caches(trained):
    root, out, m = trained
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("identification_accuracy", "identification_accuracy_ci95", "within_genre_identification_accuracy",
                "within_genre_identification_accuracy_ci95", "identification_accuracy_p",
                "within_genre_identification_accuracy_p", "genre_prior", "timings_s", "wall_s", "peak_rss_mb"):
        assert key in saved and key in m
    assert 0.0 <= saved["identification_accuracy"] <= 1.0
    for key in ("identification_accuracy_p", "within_genre_identification_accuracy_p"):
        assert 1 / 10001 <= saved[key] <= 1.0  # 10,000 permutations
    assert "permutation p" in (out / "report.html").read_text()
    assert str(saved["causal"]["deviation_scale"]) in saved["causal"]["deviation_scale_cv_identification"]
    shrinkage_cv = saved["causal"]["readout_shrinkage_cv_identification"]
    assert shrinkage_cv[str(saved["causal"]["readout_shrinkage"])] == max(shrinkage_cv.values())
    assert "error covariance shrunk by" in (out / "report.html").read_text()
    assert "offline" not in saved  # the comparison is opt-in
    assert saved["dataset"] == os.path.abspath(root)  # b2m group tells sub-001 of two datasets apart by it
    # the noise ceiling from the 2 Test repeats: a map on the brain, higher where the voxels follow the clips
    nc = saved["noise_ceiling"]
    # each Test run opens with the clip the other one ends with: ds003720's buffer, dropped (then heard once)
    assert nc["n_repeats"] == 2 and nc["n_excerpts"] == 2
    ev = nib.load(out / "noise_ceiling_ev.nii.gz").get_fdata()
    assert ev.shape == SHAPE
    assert nc["median_ev_selected"] > nc["median_ev_brain"]
    report = (out / "report.html").read_text()
    assert "Encoding model against the noise ceiling" in report
    assert f"{saved['nway']['n_way']}-way identification, top-1" in report
    lo, hi = saved["within_genre_identification_accuracy_ci95"]  # the headline gives both goals' figures with CIs
    assert f"within-genre identification {saved['within_genre_identification_accuracy']:.3f}</b> (95% CI {lo:.3f}-{hi:.3f})" in report
    # the genres behind the figures: the retrieved genre's confusion (its diagonal is the agreement) and
    # within-genre identification per genre (weighted by clips, the headline figure)
    conf = np.asarray(saved["causal"]["retrieval_genre_confusion"]["counts"])
    assert conf.sum() == saved["causal"]["n_test_clips"]
    assert np.trace(conf) / conf.sum() == pytest.approx(saved["causal"]["retrieval_genre_agreement"]["top1"])
    by = saved["causal"]["within_genre_identification_by_genre"]
    assert sorted(by) == sorted(GENRES)
    assert sum(v["mean"] * v["n_clips"] for v in by.values()) / sum(v["n_clips"] for v in by.values()) == \
        pytest.approx(saved["within_genre_identification_accuracy"])
    assert "Genres: what is retrieved, and what is told apart within each" in report
    assert "Temporal SNR of the selected voxels in the Training runs" in report
    # provenance: the code that made the bundle (in its manifest too) and the files it was made from
    import hashlib

    prov = saved["provenance"]
    assert prov == json.loads((out / "manifest.json").read_text())["provenance"]
    assert prov["packages"]["numpy"] == np.__version__ and prov["created_utc"].endswith("+00:00")
    files = saved["dataset_files"]
    assert [(f["task"], f["run"]) for f in files] == [("Training", 1), ("Training", 2), ("Test", 1), ("Test", 2)]
    for f in files:
        bold = root / f["bold"]
        assert f["bold_bytes"] == bold.stat().st_size
        events = str(bold).replace("_bold.nii.gz", "_events.tsv").replace("_bold.nii", "_events.tsv")
        assert f["events_sha256"] == hashlib.sha256(open(events, "rb").read()).hexdigest()
    assert "2 Training and 2 Test runs" in report and f"Made by b2m {prov['b2m']}" in report
    assert json.loads((out / "config.json").read_text())["n_voxels"] == 60
    assert len(list((root / "derivatives" / "b2m" / "preproc" / "sub-001").glob("*.npy"))) == 4
    assert (out / "report.html").is_file()


def test_trained_bundle_runs_in_a_fresh_process_with_only_numpy_onnxruntime_protocols(trained, tmp_path):
    from realtime.decoder import Decoder

    _, out, _ = trained
    dec = Decoder(out)
    x = np.random.default_rng(1).standard_normal((5, dec.input_dim)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import json, sys
import numpy as np
import onnxruntime as ort
from protocols.bundle import validate_bundle

manifest = validate_bundle({str(out)!r})
mask = np.load({str(out / 'mask.npy')!r})
assert mask.sum() * len(manifest["delays"]) == manifest["input_dim"]
sess = ort.InferenceSession({str(out / 'decoder.onnx')!r}, providers=["CPUExecutionProvider"])
y = sess.run(None, {{"x": np.load({str(tmp_path / 'x.npy')!r})}})[0]
np.save({str(tmp_path / 'y.npy')!r}, y)
# protocols' own dependencies: msgpack (wire headers), isal (CRC-32; Cython-built)
allowed = {{"numpy", "onnxruntime", "protocols", "msgpack", "isal", "cython_runtime"}}
loaded = {{name.split(".")[0] for name in list(sys.modules)}}
extra = sorted(n for n in loaded - set(sys.stdlib_module_names) - allowed if not n.startswith("_"))
print(json.dumps(extra))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []  # not torch, sklearn, scipy, music, realtime...
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), dec.decode_batch(x), rtol=0, atol=1e-6)


def test_train_with_roi_mask_and_top_regions(trained, tmp_path):
    """An ROI restricts the candidates; --top-regions keeps whole regions; a mask off the grid is refused."""
    from offline_training.train import TrainConfig, train

    root, _, _ = trained
    ref = nib.load(next((root / "sub-001" / "func").glob("*Training_run-01_bold.nii.gz")))
    affine = ref.affine
    roi = np.zeros(SHAPE, np.uint8)
    roi[:, :6] = 1  # half the field of view
    parc = np.zeros(SHAPE, np.int16)
    parc[:6, :6], parc[6:, :6], parc[:, 6:] = 1, 2, 3  # region 3 lies outside the ROI
    nib.save(nib.Nifti1Image(roi, affine), tmp_path / "roi.nii.gz")
    nib.save(nib.Nifti1Image(parc, affine), tmp_path / "parc.nii.gz")
    cfg = TrainConfig(embedder="tiny-bands", n_voxels=60, motion=False, alphas=(0.1, 10.0, 1e3, 1e5),
                      roi_mask=str(tmp_path / "roi.nii.gz"), parcellation=str(tmp_path / "parc.nii.gz"),
                      top_regions=1)
    m = train(str(root), str(tmp_path / "bundle"), cfg)
    vs = m["causal"]["voxel_selection"]
    assert len(vs["regions"]) == 1 and vs["regions"][0]["label"] in (1, 2)
    kept = np.load(tmp_path / "bundle" / "mask.npy")  # the bundle's voxels
    assert kept.sum() == vs["n_voxels"] == vs["regions"][0]["n_voxels"]
    assert not kept[:, 6:].any()  # nothing outside the ROI
    assert np.all(parc[kept] == vs["regions"][0]["label"])  # one whole region
    off = nib.Nifti1Image(roi, affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(off, tmp_path / "off.nii.gz")
    with pytest.raises(ValueError, match="off.nii.gz.*ROI mask.*resample"):
        train(str(root), str(tmp_path / "bundle2"), TrainConfig(embedder="tiny-bands", n_voxels=60, motion=False,
                                                                roi_mask=str(tmp_path / "off.nii.gz")))


def test_b2m_group_reads_trained_bundles(trained, tmp_path, b2m_proc):
    """``b2m group`` as a process on a real bundle and a copy relabelled as a second subject."""
    import shutil

    _, out, m = trained
    second = tmp_path / "sub-002"
    shutil.copytree(out, second)
    saved = json.loads((second / "metrics.json").read_text())
    saved["config"]["subject"] = "002"
    (second / "metrics.json").write_text(json.dumps(saved))
    p = b2m_proc("group", out, second, "--out", tmp_path / "group", "--boot", "500")
    assert p.wait(timeout=120) == 0, p.stderr()
    table = p.stdout()
    assert "sub-001" in table and "sub-002" in table and "within-genre identification" in table
    g = json.loads((tmp_path / "group" / "group.json").read_text())
    for key, headline in (("identification", "identification_accuracy"),
                          ("identification_centred", "identification_accuracy_centred"),
                          ("within_genre", "within_genre_identification_accuracy")):
        assert g["metrics"][key]["per_subject"]["001"]["mean"] == pytest.approx(m[headline], abs=1e-12)
        assert g["metrics"][key]["sd"] == 0.0  # two identical subjects
    for key, headline in (("identification", "identification_accuracy_ci95"),
                          ("within_genre", "within_genre_identification_accuracy_ci95")):
        assert g["metrics"][key]["per_subject"]["001"]["ci95"] == pytest.approx(m[headline], abs=1e-12)
    assert "data:image/png;base64," in (tmp_path / "group" / "group.html").read_text()
    bad = b2m_proc("group", out, tmp_path / "nowhere", "--out", tmp_path / "g2")
    assert bad.wait(timeout=120) == 2
    assert str(tmp_path / "nowhere" / "metrics.json") in bad.stderr().replace("\n", "")


def test_b2m_train_several_subjects_then_the_group(tmp_path, capsys):
    """``b2m train DS --subject all``: a bundle per subject, the group summary, and a failed subject that
    does not stop the others (exit code 1, named on stderr)."""
    from b2m.cli import main

    register_embedder("tiny-bands", lambda **kw: BandsEmbedder(**kw))
    root = tmp_path / "ds"
    for k, sub in enumerate(("001", "002", "003")):
        _tiny_dataset(root, np.random.default_rng(10 + k), subject=sub)
    for f in (root / "sub-003" / "func").glob("*Test*"):
        f.unlink()  # subject 003 cannot be evaluated
    out = tmp_path / "bundles"
    rc = main(["train", str(root), "--subject", "all", "--out", str(out), "--embedder", "tiny-bands",
               "--voxels", "60", "--no-motion", "--alphas", "1e-1:1e5:4"])
    captured = capsys.readouterr()
    assert rc == 1
    # one line, whatever the length of the tmp path it names (rich would wrap it at 80 columns)
    assert any("subject 003 failed" in line and "has no Test runs" in line for line in captured.err.splitlines())
    lines = captured.out.splitlines()
    heads = [json.loads(line) for line in lines if line.startswith("{")]
    assert [h["subject"] for h in heads] == ["001", "002"]
    group = json.loads((out / "group.json").read_text())
    assert group["subjects"] == ["001", "002"]
    for h in heads:
        saved = json.loads((out / f"sub-{h['subject']}" / "metrics.json").read_text())
        assert h["identification_accuracy"] == round(saved["identification_accuracy"], 4)
        assert group["metrics"]["identification"]["per_subject"][h["subject"]]["mean"] == pytest.approx(
            saved["identification_accuracy"], abs=1e-12)
    assert any("within-genre identification" in line for line in lines)
    assert (out / "group.html").is_file() and not (out / "sub-003" / "metrics.json").exists()
    assert main(["train", str(root), "--subject", "001,sub-001", "--out", str(out)]) == 2
    assert "names a subject twice" in capsys.readouterr().err


def test_b2m_train_warns_when_alphas_pile_at_an_edge_of_the_grid(trained, tmp_path, capsys):
    from b2m.cli import main

    root, _, _ = trained
    rc = main(["train", str(root), "--subject", "001", "--out", str(tmp_path / "b"), "--embedder", "tiny-bands",
               "--voxels", "60", "--no-motion", "--ema-tau", "9",  # a high-pass that fits these 75 s runs
               "--alphas", "1e-3:1e-2:2"])  # far too little shrinkage for 4 rows
    err = capsys.readouterr().err
    assert rc == 0
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())["causal"]["alphas"]
    assert saved["at_max"] > 0
    said = " ".join(err.split())  # rich wraps long lines
    assert (f"{saved['at_min']} of 4 embedding dimensions chose the smallest alpha (0.001) and {saved['at_max']} "
            "the largest (0.01); widen --alphas") in said


def test_b2m_train_select_by_within_genre_is_recorded_and_reads_the_chosen_voxels(trained, tmp_path, capsys):
    from b2m.cli import main

    root, _, _ = trained
    out = tmp_path / "w"
    rc = main(["train", str(root), "--subject", "001", "--out", str(out), "--embedder", "tiny-bands",
               "--voxels", "20", "--no-motion", "--select-by", "within-genre", "--alphas", "1e-1:1e5:4"])
    assert rc == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["select_by"] == "within-genre"
    vs = saved["causal"]["voxel_selection"]
    assert vs["rule"].startswith("top voxels by within-genre CV correlation among the 60 best") and vs["n_voxels"] == 20
    assert np.load(out / "mask.npy").sum() == 20  # the bundle reads exactly the voxels chosen
    rc = main(["train", str(root), "--out", str(tmp_path / "r"), "--embedder", "tiny-bands", "--no-motion",
               "--select-by", "within-genre", "--parcellation", str(out / "mask.nii.gz"), "--top-regions", "1"])
    assert rc == 2 and not (tmp_path / "r").exists()  # refused before any work
    assert "give one of them" in " ".join(capsys.readouterr().err.split())


def test_b2m_train_detrend_ema_is_stored_in_the_bundle_and_a_bad_time_constant_refused(trained, tmp_path, capsys):
    from b2m.cli import main
    from protocols.bundle import validate_bundle

    root, _, _ = trained
    out = tmp_path / "ema"
    rc = main(["train", str(root), "--subject", "001", "--out", str(out), "--embedder", "tiny-bands",
               "--voxels", "20", "--no-motion", "--detrend", "ema", "--ema-tau", "9", "--alphas", "1e-1:1e5:4"])
    assert rc == 0
    pre = validate_bundle(str(out))["preprocess"]
    assert pre["detrend"] == "ema" and pre["ema_tau_s"] == 9.0  # what the live session will run
    assert json.loads((out / "metrics.json").read_text())["config"]["detrend"] == "ema"
    rc = main(["train", str(root), "--subject", "001", "--out", str(tmp_path / "bad"), "--embedder", "tiny-bands",
               "--no-motion", "--detrend", "ema", "--ema-tau", "0"])
    assert rc == 2 and not (tmp_path / "bad").exists()
    assert "--ema-tau" in " ".join(capsys.readouterr().err.split())
    rc = main(["train", str(root), "--subject", "001", "--out", str(tmp_path / "bad"), "--embedder", "tiny-bands",
               "--no-motion", "--detrend", "causal", "--normalize", "psc"])
    assert rc == 2 and not (tmp_path / "bad").exists()
    assert "--normalize psc" in " ".join(capsys.readouterr().err.split())


def test_b2m_train_preprocessing_defaults_are_preprocess_configs():
    # a bundle trained with no flags deploys PreprocessConfig's defaults: the CLI does not keep its own copy
    import argparse

    from b2m.commands import train
    from realtime.preprocessing.pipeline import PreprocessConfig

    p = argparse.ArgumentParser()
    train.add_parser(p.add_subparsers())
    args = p.parse_args(["train", "DS", "--out", "OUT"])
    pre = PreprocessConfig()
    assert args.delays == pre.delays  # parsed into whole numbers of TRs
    assert (args.detrend, args.poly_order, args.ema_tau, args.normalize) == (pre.detrend, pre.poly_order,
                                                                           pre.ema_tau_s, pre.normalize)


def _causal_glm_highpass(y: np.ndarray, order: int = 2, ridge: float = 1e-6) -> np.ndarray:
    """CausalDetrender's documented fit, as plain batch numpy: at volume t, the Legendre polynomials of time
    (up to ``order``, time mapped to [-1, 1] over the run) fit to volumes 0..t by least squares with a ridge of
    ``ridge * trace(X'X) / p`` on X'X, and volume t's residual. y: (n_volumes, n_voxels), float64."""
    n = len(y)
    x = np.linspace(-1.0, 1.0, n)
    legendre = [np.ones(n), x, (3 * x ** 2 - 1) / 2, (5 * x ** 3 - 3 * x) / 2][:order + 1]
    basis = np.stack(legendre, axis=1)
    out = np.empty_like(y)
    for t in range(n):
        xt = basis[:t + 1]
        xtx = xt.T @ xt
        lam = ridge * max(np.trace(xtx), 1e-12) / xtx.shape[0]
        beta = np.linalg.solve(xtx + lam * np.eye(xtx.shape[0]), xt.T @ y[:t + 1])
        out[t] = y[t] - basis[t] @ beta
    return out


def test_bundle_training_tsnr_is_the_median_of_the_training_runs_recomputed_from_the_bold(trained):
    """``qc.tsnr`` of a trained bundle, recomputed from the dataset's images: each Training run's voxels at the
    bundle's mask (motion correction off in this training), mean over the run / s.d. of the causal GLM
    high-pass written above, the median over the bundle's voxels (60, under 2,000: all of them), then the median
    over the runs. Float32 precision: the chain's high-passed values are float32."""
    import json

    import nibabel as nib

    from protocols.bundle import training_tsnr, validate_bundle

    root, out, metrics = trained
    manifest = validate_bundle(str(out))
    pre = manifest["preprocess"]
    assert (pre["detrend"], pre["poly_order"], pre["motion"]) == ("causal", 2, False)
    mask = np.load(out / "mask.npy")
    assert mask.sum() == 60
    want, curves = {}, []
    for bold in sorted((root / "sub-001" / "func").glob("sub-001_task-Training_run-*_bold.nii.gz")):
        raw = np.asarray(nib.load(bold).dataobj)[mask].T.astype(np.float64)  # (n_volumes, 60)
        hp = _causal_glm_highpass(raw, pre["poly_order"])
        per_voxel = raw.mean(axis=0) / hp.std(axis=0)
        assert np.isfinite(per_voxel).all() and per_voxel.min() > 0
        want["Training_run-" + bold.name.split("_run-")[1][:2]] = float(np.median(per_voxel))
        # the running figure a live session reports after t + 1 volumes: the first t + 1 only
        curves.append([np.median(raw[:t + 1].mean(axis=0) / hp[:t + 1].std(axis=0)) for t in range(19, len(raw))])
    assert len(want) == 2
    qc = manifest["qc"]["tsnr"]
    assert sorted(qc["runs"]) == sorted(want)
    for run, value in want.items():
        assert qc["runs"][run] == pytest.approx(value, rel=1e-5), run
    assert qc["median"] == pytest.approx(np.median(list(want.values())), rel=1e-5)
    # the curve: nothing for the first 19 volumes, then the median over the runs of their running figures
    curve = np.median(np.array(curves), axis=0)
    assert qc["curve"][:19] == [None] * 19 and len(qc["curve"]) == N_VOL
    np.testing.assert_allclose(qc["curve"][19:], curve, rtol=1e-4)  # kept to 3 decimals
    assert qc["curve"][-1] == pytest.approx(qc["median"], abs=1e-3)
    assert training_tsnr(manifest, 30) == qc["curve"][29]
    assert training_tsnr(manifest) == qc["median"]  # what a live session compares its runs with
    # metrics.json carries the same block as the manifest (and the returned metrics)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["qc"]["tsnr"] == qc == json.loads(json.dumps(metrics["qc"]["tsnr"]))
    assert qc["measure"]
